"""Peers on the same sampling loop: diffusers' cache hooks (always installed), cache-dit (optional), the counting,
and compare_peers end to end on the tiny config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ditcache.benchmarks import peers
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.graphs import costs_for, parse_schedule
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import get_spec
from ditcache.graphs.weights import load_model

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
SPEC = get_spec("dit-tiny")
REQUEST = SampleRequest((3, 7), STEPS, 4.0, 0, "ddim")
CALIBRATION = SampleRequest((1, 2), STEPS, 4.0, 100, "ddim")

# thresholds chosen so that every peer caches something on the tiny random-weight model
DIFFUSERS_ROWS = [
    {"name": "fbc", "method": "fbc", "threshold": 0.5},
    {"name": "pab", "method": "pab", "spatial_attention_timestep_skip_range": [-1, 1000]},
    # default timestep range: with (-1, 1000) FasterCache skips at its 2nd call, before it has two cached outputs,
    # and fails inside diffusers (TypeError: 'NoneType' object is not subscriptable)
    {"name": "fastercache", "method": "fastercache", "is_guidance_distilled": True},
    {"name": "magcache", "method": "magcache", "threshold": 0.5, "retention_ratio": 0.25},
    {"name": "taylorseer", "method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2},
    {"name": "seacache", "method": "seacache", "threshold": 5.0, "max_consecutive_cached": 0},
]


def fresh_model():
    model, _ = load_model(SPEC, random_weights=True, seed=0)
    return model


def run(row, runs: int = 1):
    model = fresh_model()
    method = peers.install(row, model, SPEC, STEPS, calibration=CALIBRATION)
    counter = peers.CallCounter(model)
    outs = [peers.run_sampling(method, SPEC, REQUEST) for _ in range(runs)]
    method.remove()
    return outs, peers.count_summary(counter.calls, SPEC, len(REQUEST.class_labels), runs)


@pytest.fixture(scope="module")
def full_output():
    (out,), counts = run({"name": "full", "method": "ditcache", "schedule": parse_schedule({"kind": "full",
                                                                                            "steps": STEPS})})
    return out, counts


def test_full_counts_every_block(full_output):
    _, counts = full_output
    assert counts["denoiser_calls_per_run"] == STEPS
    assert counts["blocks_run_per_run"] == counts["blocks_full_per_run"] == STEPS * SPEC.num_blocks
    assert counts["attn_run_per_run"] == STEPS * SPEC.num_blocks
    assert counts["mac_fraction"] == pytest.approx(1.0)
    assert counts["gmacs_per_image"] * 1e9 == pytest.approx(STEPS * costs_for(SPEC, 2).full)  # per image, CFG batch


def test_ditcache_counted_macs_equal_the_plan():
    schedule = parse_schedule({"kind": "delta-dit", "steps": STEPS, "boundary": 4, "interval": 2, "cached_blocks": 2})
    _, counts = run({"name": "delta", "method": "ditcache", "schedule": schedule})
    plan = plan_for(schedule, SPEC)
    assert counts["gmacs_per_image"] * 1e9 == pytest.approx(plan.total_macs(costs_for(SPEC, 2)))
    assert counts["blocks_run_per_run"] == sum(plan.blocks_computed(s) for s in range(STEPS))


@pytest.mark.parametrize("row", DIFFUSERS_ROWS, ids=[r["name"] for r in DIFFUSERS_ROWS])
def test_diffusers_hook_caches_and_changes_the_output(row, full_output):
    full, _ = full_output
    (out, again), counts = run(row, runs=2)
    skipped_attention = counts["attn_run_per_run"] < counts["blocks_full_per_run"]
    skipped_blocks = counts["blocks_run_per_run"] < counts["blocks_full_per_run"]
    assert skipped_attention or skipped_blocks, counts
    assert counts["mac_fraction"] < 1.0
    assert not torch.allclose(out, full), "a caching peer must move the output"
    torch.testing.assert_close(out, again)  # start_run resets the hooks' state between runs


def test_taylorseer_default_identifiers_hook_nothing_on_dit(full_output):
    """Why the taylorseer rows name their modules: the hook's defaults match no DiT attention module."""
    full, _ = full_output
    (out,), counts = run({"name": "ts", "method": "taylorseer", "cache_interval": 2, "disable_cache_before_step": 2,
                          "cache_identifiers": None})
    assert counts["blocks_run_per_run"] == counts["blocks_full_per_run"]
    torch.testing.assert_close(out, full)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method"):
        peers.install({"name": "x", "method": "nope"}, fresh_model(), SPEC, STEPS)


def test_failing_peer_gives_an_error_row(tmp_path):
    """FasterCache's default unconditional-batch skip halves the batch but not DiT's class labels: a failed row."""
    from ditcache.benchmarks.peer_worker import main

    job = {"phase": "eager", "row": {"name": "fc", "method": "fastercache"}, "model": "dit-tiny", "weights": None,
           "steps": STEPS, "scheduler": "ddim", "guidance": 4.0, "seed": 0, "threads": 1,
           "timing": {"classes": [3, 7], "warmup": 0, "repeats": 1}, "quality": None,
           "work_file": str(tmp_path / "q.npz")}
    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fresh_model().state_dict().items()
               if not k.endswith("pos_embed.pos_embed")}, str(weights))
    job["weights"] = str(weights)
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["--job", str(tmp_path / "job.json"), "--result", str(tmp_path / "r.json")]) == 1
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["status"].startswith("failed: RuntimeError")
    assert "traceback" in result


cache_dit_missing = peers.cache_dit_unavailable()


@pytest.mark.skipif(cache_dit_missing is not None, reason=f"cache-dit path: {cache_dit_missing}")
@pytest.mark.parametrize("extra", [{}, {"taylorseer": 1}, {"steps_mask": {"compute": [3, 1, 1], "cache": [1, 2]}}],
                         ids=["dbcache", "dbcache-taylorseer", "dbcache-steps-mask"])
def test_cache_dit_dbcache(extra, full_output):
    full, _ = full_output
    row = {"name": "db", "method": "dbcache", "Fn": 1, "Bn": 0, "threshold": 0.5, "warmup": 2, **extra}
    model = fresh_model()
    method = peers.install(row, model, SPEC, STEPS)
    counter = peers.CallCounter(model)
    out = peers.run_sampling(method, SPEC, REQUEST)
    info = method.info()
    again = peers.run_sampling(method, SPEC, REQUEST)
    method.remove()
    counts = peers.count_summary(counter.calls, SPEC, 2, 2)
    assert counts["blocks_run_per_run"] < counts["blocks_full_per_run"]
    assert info["cache_dit_cached_steps"], info
    assert not torch.allclose(out, full)
    torch.testing.assert_close(out, again)  # refresh_context between runs


def test_peers_config_validation(tmp_path):
    from ditcache.benchmarks.bench_config import ConfigError
    from ditcache.benchmarks.compare_peers import load_peers_config

    cfg = load_peers_config(REPO / "benchmarks/configs/peers-fmnist.yaml")
    assert cfg["rows"][0]["name"] == "full" and cfg["quality"]["fid"]
    load_peers_config(REPO / "benchmarks/configs/peers-dit-xl.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dit-tiny\nsteps: 4\ntiming: {classes: [1]}\nrows:\n  - {name: a, method: fbc}\n")
    with pytest.raises(ConfigError, match="'full'"):
        load_peers_config(bad)
    assert cfg["compile"]["rows"] == [row["name"] for row in cfg["rows"]]  # "rows: all"
    bad.write_text("model: dit-tiny\nsteps: 4\ntiming: {classes: [1]}\ncompile: {rows: full}\nrows:\n"
                   "  - {name: full, method: ditcache, schedule: {kind: full, steps: 4}}\n")
    with pytest.raises(ConfigError, match="list of row names or 'all'"):
        load_peers_config(bad)


def test_matched_by_needs_faster_and_better():
    """The "matched by" rule: at least as fast (per mode) and at least as good (FID, else PSNR)."""
    from ditcache.benchmarks.compare_peers import _dominance

    def row(name, method, eager, compiled, fid):
        return {"name": name, "method": method, "error": None, "eager_speedup": eager, "compiled_speedup": compiled,
                "fid": fid, "psnr_vs_full_db": None}

    rows = [row("full", "ditcache", 1.0, 1.0, 10.0), row("ours-fast", "ditcache", 2.0, 1.5, 11.0),
            row("ours-good", "ditcache", 1.2, 1.6, 9.0), row("peer", "fbc", 1.5, 1.2, 10.5)]
    _dominance(rows, quality_comparable=True)
    assert rows[3]["matched_by_eager"] == [] and rows[3]["matched_by_compiled"] == ["ours-good"]
    _dominance(rows, quality_comparable=False)
    assert rows[3]["matched_by_eager"] is None and rows[3]["matched_by_compiled"] is None


@pytest.mark.e2e
def test_compare_peers_end_to_end(tmp_path):
    """The one command on the tiny config (no compile phase: that is minutes on a loaded 2-core CPU)."""
    from ditcache.benchmarks.compare_peers import main

    out = tmp_path / "out"
    code = main(["--config", str(REPO / "benchmarks/configs/peers-tiny.yaml"), "--out-dir", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--no-compile", "--quiet"])
    assert code == 0
    record = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    assert rows["full"]["status"] == "ok" and rows["full"]["eager_speedup"] == pytest.approx(1.0)
    assert rows["delta"]["blocks_run_per_run"] < rows["full"]["blocks_run_per_run"]
    assert rows["fbc"]["status"] == "ok" and rows["fbc"]["psnr_vs_full_db"] is not None
    assert rows["fastercache-default"]["error"].startswith("failed:")
    if cache_dit_missing:
        assert rows["dbcache"]["status"].startswith("skipped")
    else:
        assert rows["dbcache"]["status"] == "ok"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "pareto.png").stat().st_size > 0
    else:  # installed without the bench extra: tables only
        assert not (out / "pareto.png").exists()
    text = (out / "results.md").read_text()
    assert "fastercache-default" in text
    # random weights: speed per skipped compute is reported, quality is not used to pick winners
    delta = rows["delta"]
    assert delta["eager_per_mac"] == pytest.approx(delta["eager_speedup"] / delta["mac_speedup"])
    assert record["random_weights"] and "Not judged on random weights" in text
    assert all(rows[n]["matched_by_eager"] is None for n in ("fbc", "pab", "taylorseer"))


@pytest.mark.slow
def test_compile_phase_counts_graph_breaks(tmp_path):
    """torch.compile of a peer: FirstBlockCache decides with .item(), which breaks the graph."""
    from ditcache.benchmarks.peer_worker import phase_compile

    weights = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fresh_model().state_dict().items()
               if not k.endswith("pos_embed.pos_embed")}, str(weights))
    job = {"phase": "compile", "row": {"name": "fbc", "method": "fbc", "threshold": 0.5}, "model": "dit-tiny",
           "weights": str(weights), "steps": 4, "scheduler": "ddim", "guidance": 4.0, "seed": 0,
           "timing": {"classes": [3], "repeats": 1}, "compile_repeats": 1}
    result = phase_compile(job)
    assert result["status"] == "ok" and result["graph_breaks"] > 0
    # ditcache's row: compiled as export-engines does (one graph per variant), no graph break, no steady recompile
    job["row"] = {"name": "delta", "method": "ditcache",
                  "schedule": {"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2, "cached_blocks": 2}}
    result = phase_compile(job)
    assert result["status"] == "ok", result
    assert result["graph_breaks"] == 0 and result["steady_recompiles"] == 0
    assert "variant granularity" in result["notes"][0]
