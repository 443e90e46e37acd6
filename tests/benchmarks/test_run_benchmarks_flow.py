"""The benchmark runner on the flow families: benchmarks/configs/tiny-{flux,sd3,wan}.yaml (random weights, synthetic
prompt embeddings with pooled ones for FLUX / SD3): stock FluxPipeline / StableDiffusion3Pipeline / WanPipeline
(whose output field is ``frames``), ditcache eager full and Δ-DiT rows; frames and resolution of the CPU configs."""

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
                 str(tmp_path / "cache"), "--quiet"]) == 0
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
    assert all(r.resolution == 128 and r.frames == 9 for r in wan)
    flux = load_config(CONFIGS / "cpu-flux.yaml")
    assert flux.model_batch == 1  # embedded guidance
    text = (CONFIGS / "cpu-wan.yaml").read_text()
    compiled = build_rows(parse_config(yaml.safe_load(text.replace("backends: [eager]", "backends: [eager, inductor]")),
                                       "x.yaml"))
    assert {r.backend for r in compiled} == {"diffusers", "eager", "inductor"} and all(r.frames == 9 for r in compiled)
    with pytest.raises(ConfigError, match="4k \\+ 1 frames"):
        parse_config(yaml.safe_load(text.replace("frames: 9", "frames: 8")), "x.yaml")
    with pytest.raises(ConfigError, match="no frame count"):
        parse_config(yaml.safe_load((CONFIGS / "cpu-sd3.yaml").read_text() + "frames: 5\n"), "x.yaml")
