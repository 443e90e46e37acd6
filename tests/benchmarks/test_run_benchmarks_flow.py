"""The benchmark runner on the flow families: benchmarks/configs/tiny-{flux,sd3,wan}.yaml (random weights, synthetic
prompt embeddings with pooled ones for FLUX / SD3): stock FluxPipeline / StableDiffusion3Pipeline / WanPipeline
(whose output field is ``frames``), ditcache eager full and Δ-DiT rows, the peers on the stock pipeline (diffusers
FirstBlockCache, cache-dit DBCache; eager, and under torch.compile: slow); frames and resolution of the CPU configs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ditcache.benchmarks.bench_config import ConfigError, build_rows, load_config, parse_config
from ditcache.benchmarks.run_benchmarks import main

pytest.importorskip("transformers", reason="diffusers' pipelines (the stock rows) need transformers")

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


@pytest.mark.slow
@pytest.mark.parametrize("family, model_batch", [("flux", 2), ("sd3", 4), ("wan", 4)])
def test_tiny_flow_rows(tmp_path, family, model_batch):
    """FLUX.1-dev's guidance 3.5 is a model input: its model batch is the images' (2), not doubled."""
    out = tmp_path / "out"
    assert main(["--config", str(CONFIGS / f"tiny-{family}.yaml"), "--out-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--backends", "diffusers", "eager", "--quiet"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    stock, full, delta = rows["diffusers/fp32/full-6"], rows["eager/fp32/full-6"], rows["eager/fp32/delta-6"]
    assert stock["model_batch"] == model_batch
    if family == "wan":  # WanPipeline's two calls vs one batch: equal within fp32 rounding
        assert full["psnr_vs_stock_db"] == "inf" or float(full["psnr_vs_stock_db"]) > 80
    else:
        assert full["psnr_vs_stock_db"] == "inf"
    assert delta["theoretical_speedup"] > 1 and math.isfinite(delta["psnr_vs_full_db"]) and delta["cosine_vs_full"] < 1


def test_cpu_flow_configs_resize_and_check_frames(tmp_path):
    wan = build_rows(load_config(CONFIGS / "cpu-wan.yaml"))
    assert all(r.resolution == 64 and r.frames == 5 for r in wan)
    flux = load_config(CONFIGS / "cpu-flux.yaml")
    assert flux.model_batch == 1  # embedded guidance
    text = (CONFIGS / "cpu-wan.yaml").read_text()
    compiled = build_rows(parse_config(yaml.safe_load(text.replace("backends: [eager]", "backends: [eager, inductor]")),
                                       "x.yaml"))
    assert {r.backend for r in compiled} >= {"diffusers", "eager", "inductor"} and all(r.frames == 5 for r in compiled)
    with pytest.raises(ConfigError, match="4k \\+ 1 frames"):
        parse_config(yaml.safe_load(text.replace("frames: 5", "frames: 4")), "x.yaml")
    with pytest.raises(ConfigError, match="no frame count"):
        parse_config(yaml.safe_load((CONFIGS / "cpu-sd3.yaml").read_text() + "frames: 5\n"), "x.yaml")


def _peer_run(tmp_path, family: str, backends: list[str]) -> tuple[dict, str]:
    out = tmp_path / "out"
    assert main(["--config", str(CONFIGS / f"tiny-{family}.yaml"), "--out-dir", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--backends", *backends, "--quiet"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    return rows, (out / "results.md").read_text()


def _cached_and_reported(rows: dict, md: str, peer_ids: list[str], reference: str) -> None:
    """Each peer row ran, moved away from its full reference (every threshold here caches), and is in the table."""
    table = md[md.index("| row |"):]
    assert "| blocks run / full |" in table.splitlines()[0]
    for row_id in peer_ids:
        r = rows[row_id]
        assert r["status"] == "ok", (row_id, r["status"])
        assert r["full_reference"] == reference and r["stock_reference"] == "diffusers/fp32/full-6"
        assert math.isfinite(r["psnr_vs_full_db"]) and r["cosine_vs_full"] < 1, row_id
        assert f"| {row_id} | ok |" in table


@pytest.mark.e2e
@pytest.mark.parametrize("family", ["flux", "sd3", "wan"])
def test_tiny_flow_peer_rows(tmp_path, family):
    """Eager peers on the stock pipeline: counted blocks below full (DBCache's equal to what cache-dit's own
    summary says it cached), SD3's FirstBlockCache rows skipped with diffusers' reason, Wan's branches apart."""
    rows, md = _peer_run(tmp_path, family, ["diffusers", "fbc", "dbcache"])
    fbc = ["fbc-0.6/fp32/full-6", "fbc-1.0/fp32/full-6"]
    db = rows["dbcache-F1B0-0.6/fp32/full-6"]
    if family == "sd3":
        assert all("does not support SD3Transformer2DModel" in rows[i]["status"] for i in fbc)
        fbc = []
    _cached_and_reported(rows, md, [*fbc, db["id"]], "diffusers/fp32/full-6")
    blocks = rows["diffusers/fp32/full-6"]["blocks_full"] // 6
    for row_id in [*fbc, db["id"]]:
        r = rows[row_id]
        assert r["blocks_run"] < r["blocks_full"] == 6 * blocks and r["theoretical_speedup"] > 1, row_id
    summary = db["cache_dit_summary"]
    branches = [summary["cached_steps"]] + ([summary["cfg_cached_steps"]] if family == "wan" else [])
    expected = sum(6 * blocks - len(cached) * (blocks - 1) for cached in branches) / len(branches)  # F1B0
    assert db["blocks_run"] == pytest.approx(expected)
    if family == "wan":  # two calls per step: one FirstBlockCache state per cache context, cache-dit keeps them apart
        assert any("cond, uncond (one FirstBlockCache state per context" in n for n in rows[fbc[0]]["notes"])
        assert any("enable_separate_cfg=True" in n for n in db["notes"]) and db["counts"]["calls_per_run"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "sd3", "wan"])
def test_tiny_flow_compiled_peer_rows(tmp_path, family):
    """The stock pipeline under torch.compile, with and without a peer: a graph per break, nothing compiled in the
    timed runs, the peers against the uncached compiled pipeline (minutes: torch.compile of each row)."""
    rows, md = _peer_run(tmp_path, family, ["diffusers", "diffusers+compile", "fbc+compile", "dbcache+compile"])
    uncached = rows["diffusers+compile/bf16/full-6"]
    assert uncached["status"] == "ok" and uncached["graph_breaks"] == 0 and uncached["steady_recompiles"] == 0
    peers = ["dbcache-F1B0-0.6+compile/bf16/full-6"] + ([] if family == "sd3" else ["fbc-1.0+compile/bf16/full-6"])
    _cached_and_reported(rows, md, peers, uncached["id"])
    for row_id in peers:
        r = rows[row_id]
        assert r["graph_breaks"] > 0 and r["steady_recompiles"] == 0 and r["blocks_run"] is None, row_id
