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
smoothcache_missing = peers.peer_unavailable("smoothcache")


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
    # calibrated schedules that schedules/fmnist-calibrated/make.sh writes for the current weights: a skipped row
    # (with the command) until it has run, a checked row afterwards
    maker = (REPO / "schedules/fmnist-calibrated/make.sh").read_text()
    for row in cfg["rows"]:
        if row["method"] == "ditcache" and isinstance(row["schedule"], str):
            made = Path(row["schedule"]).is_file()
            assert made != ("unavailable" in row), row
            assert made or (Path(row["schedule"]).name in maker and "make.sh" in row["unavailable"]), row
    assert {"error-2x", "adaptive-fb-2x", "smoothcache-1.5x", "smoothcache-2x"} <= {r["name"] for r in cfg["rows"]}
    load_peers_config(REPO / "benchmarks/configs/peers-dit-xl.yaml")
    load_peers_config(REPO / "benchmarks/configs/peers-tiny.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: dit-tiny\nsteps: 4\ntiming: {classes: [1]}\nrows:\n  - {name: a, method: fbc}\n")
    with pytest.raises(ConfigError, match="'full'"):
        load_peers_config(bad)
    compiled = set(cfg["compile"]["rows"])  # every working peer row, and the ditcache rows that meet them
    assert {r["name"] for r in cfg["rows"] if r["method"] != "ditcache"} - compiled == {"fastercache-default"}
    assert {"full", "blockcache-2.2x-cf", "adaptive-fb-2x", "error-2x"} <= compiled
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
    text = (out / "results.md").read_text()
    assert rows["full"]["status"] == "ok" and rows["full"]["eager_speedup"] == pytest.approx(1.0)
    assert rows["delta"]["blocks_run_per_run"] < rows["full"]["blocks_run_per_run"]
    assert rows["fbc"]["status"] == "ok" and rows["fbc"]["psnr_vs_full_db"] is not None
    assert rows["fastercache-default"]["error"].startswith("failed:")
    if cache_dit_missing:
        assert rows["dbcache"]["status"].startswith("skipped")
    else:
        assert rows["dbcache"]["status"] == "ok"
    for name in ("smoothcache", "smoothcache-1.5x"):
        if smoothcache_missing:
            assert rows[name]["status"].startswith("skipped") and "pip install" in rows[name]["status"]
        else:
            assert rows[name]["status"] == "ok", rows[name]
            assert rows[name]["attn_run_per_run"] < rows["full"]["attn_run_per_run"]
            assert rows[name]["mac_speedup"] == pytest.approx(rows[name]["info"]["smoothcache_mac_speedup"])
    assert rows["smoothcache-1.5x"]["family"] == "SmoothCache"
    adaptive = rows["adaptive"]  # decided per batch: the dispatcher's record of every run, and the counted blocks
    assert adaptive["status"] == "ok" and adaptive["blocks_run_per_run"] < rows["full"]["blocks_run_per_run"]
    recorded = [r["blocks_run"] for r in adaptive["info"]["adaptive_runs"]]
    assert recorded[:len(adaptive["blocks_run_each_run"])] == adaptive["blocks_run_each_run"]
    assert "adaptive decisions (eager, from the dispatcher)" in text
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "pareto.png").stat().st_size > 0
    else:  # installed without the bench extra: tables only
        assert not (out / "pareto.png").exists()
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


# ---- SmoothCache (optional extra) ---------------------------------------------------------------------------
def smoothcache_reference(schedule: dict[str, list[int]], request: SampleRequest) -> torch.Tensor:
    """A plain loop applying the same per-step reuse decisions on a fresh model with forward hooks (not
    SmoothCache's helper): every layer computes, and at a 0 step its output is replaced by the one it gave at the
    last 1 step."""
    from ditcache.compiler.runtime.sampling import model_denoiser, sample

    model = fresh_model()
    step, cache = [0], {}

    def hook_for(key, name):
        def hook(module, args, output):
            if schedule[name][step[0]] == 0:
                return cache[key]
            cache[key] = output
            return None

        return hook

    for i, block in enumerate(model.transformer_blocks):
        for name in schedule:
            getattr(block, name).register_forward_hook(hook_for((name, i), name))
    run = model_denoiser(model)

    def denoiser(inputs):
        out = run(inputs)
        step[0] += 1
        return out

    return sample(denoiser, SPEC, request)


def test_smoothcache_scan_follows_the_documented_rule():
    """The longest look-ahead under α wins; first and last step always computed; α solved for a MAC budget is the
    smallest measured distance that reaches it."""
    from ditcache.benchmarks.smoothcache_peer import LayerErrors, alpha_for_speedup, scan, schedule_speedup

    steps = 8
    rows = ((0.9, 0.2, 0.1, 0.1, 0.1, 0.3, 0.1),  # k = 1: step s vs s + 1
            (0.9, 0.3, 0.2, 0.2, 0.2, 0.2),  # k = 2
            (0.9, 0.35, 0.9, 0.9, 0.9))  # k = 3
    errors = LayerErrors("attn1", rows)
    # s=0: nothing <= 0.3 -> compute; s=1: k=2 (0.3) -> reuse at 2, 3; s=4: k=2 (0.2) -> 5, 6; s=7: last
    assert scan(errors, 0.3, steps) == [1, 1, 0, 0, 1, 0, 0, 1]
    assert scan(errors, 0.0, steps) == [1] * steps
    assert scan(errors, 0.36, steps) == [1, 1, 0, 0, 0, 1, 0, 1]  # k=3 at s=1, then k=2 at s=5 (last forced)
    both = {"attn1": errors, "ff": LayerErrors("ff", rows)}
    alpha, speedup = alpha_for_speedup(SPEC, both, steps, 1.5)
    grid = sorted({v for r in rows for v in r})
    reached = [a for a in grid if schedule_speedup(SPEC, {k: scan(e, a, steps) for k, e in both.items()}, steps) >= 1.5]
    assert alpha == min(reached) and speedup >= 1.5
    with pytest.raises(ValueError, match="no SmoothCache threshold reaches"):
        alpha_for_speedup(SPEC, both, steps, 50.0)


def test_smoothcache_calibration_is_the_block_averaged_relative_l1():
    """calibrate() against the distances computed directly from every recorded output of a full run."""
    from ditcache.benchmarks.smoothcache_peer import calibrate
    from ditcache.compiler.runtime.sampling import model_denoiser, sample

    model = fresh_model()
    outputs: dict[tuple[str, int], list[torch.Tensor]] = {}
    handles = [getattr(b, n).register_forward_hook(
        lambda m, a, o, key=(n, i): outputs.setdefault(key, []).append(o.detach().clone()))
        for i, b in enumerate(model.transformer_blocks) for n in ("attn1", "ff")]
    sample(model_denoiser(model), SPEC, CALIBRATION)
    for h in handles:
        h.remove()
    errors = calibrate(model, SPEC, CALIBRATION, lookahead=2)
    for name in ("attn1", "ff"):
        for k in (1, 2):
            expected = [sum(float((outputs[(name, i)][s] - outputs[(name, i)][s + k]).abs().sum()
                                  / outputs[(name, i)][s + k].abs().sum()) for i in range(SPEC.num_blocks))
                        / SPEC.num_blocks for s in range(STEPS - k)]
            assert errors[name].rows[k - 1] == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(smoothcache_missing is not None, reason=f"SmoothCache path: {smoothcache_missing}")
def test_smoothcache_skips_layers_and_equals_a_plain_loop(full_output):
    full, full_counts = full_output
    row = {"name": "sc", "method": "smoothcache", "alpha": 0.5}
    model = fresh_model()
    method = peers.install(row, model, SPEC, STEPS, calibration=CALIBRATION)
    counter = peers.CallCounter(model)
    out, again = (peers.run_sampling(method, SPEC, REQUEST) for _ in range(2))
    info = method.info()
    method.remove()
    counts = peers.count_summary(counter.calls, SPEC, 2, 2)
    schedule = info["smoothcache_schedule"]
    assert set(schedule) == {"attn1", "ff"} and 0 in schedule["attn1"] and 0 in schedule["ff"]
    # the reused layers are counted as skipped: their leaf layers never run
    assert counts["attn_run_per_run"] == SPEC.num_blocks * sum(schedule["attn1"]) < full_counts["attn_run_per_run"]
    assert counts["blocks_run_per_run"] == SPEC.num_blocks * sum(schedule["ff"]) < full_counts["blocks_run_per_run"]
    assert 1 / counts["mac_fraction"] == pytest.approx(info["smoothcache_mac_speedup"])
    assert not torch.allclose(out, full), "reusing layer outputs must move the output"
    torch.testing.assert_close(out, again)  # start_run resets the helper's step counters and cache
    torch.testing.assert_close(out, smoothcache_reference(schedule, REQUEST))
    assert all("forward" not in getattr(b, n).__dict__ for b in model.transformer_blocks for n in schedule)
    (restored,), _ = run({"name": "full", "method": "ditcache", "schedule": parse_schedule({"kind": "full",
                                                                                            "steps": STEPS})})
    torch.testing.assert_close(restored, full)


@pytest.mark.skipif(smoothcache_missing is not None, reason=f"SmoothCache path: {smoothcache_missing}")
def test_smoothcache_target_speedup_and_given_schedule():
    (_,), counts = run({"name": "sc", "method": "smoothcache", "target_speedup": 1.5})
    assert 1 / counts["mac_fraction"] >= 1.5
    given = {"attn1": [1, 0, 1, 0, 1, 0, 1, 1], "ff": [1, 1, 1, 1, 1, 1, 1, 1]}
    (out,), counts = run({"name": "sc", "method": "smoothcache", "smoothcache_schedule": given})
    assert counts["attn_run_per_run"] == SPEC.num_blocks * 5 and counts["blocks_run_per_run"] == STEPS * SPEC.num_blocks
    torch.testing.assert_close(out, smoothcache_reference(given, REQUEST))
    with pytest.raises(ValueError, match="exactly one of alpha and target_speedup"):
        run({"name": "sc", "method": "smoothcache"})


def test_smoothcache_unavailable_gives_the_install_hint(monkeypatch, tmp_path):
    import argparse
    import importlib.metadata

    from ditcache.benchmarks import compare_peers

    real = importlib.metadata.version

    def version(name):
        if name == "dit-smoothcache":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    reason = peers.peer_unavailable("smoothcache")
    assert "pip install 'ditcache[peers]'" in reason and "dit-smoothcache==0.1.1" in reason
    with pytest.raises(peers.PeerUnavailable, match=r"ditcache\[peers\]"):
        peers.install({"name": "sc", "method": "smoothcache", "alpha": 0.1}, fresh_model(), SPEC, STEPS,
                      calibration=CALIBRATION)
    cfg = compare_peers.load_peers_config(REPO / "benchmarks/configs/peers-tiny.yaml")
    row = next(r for r in cfg["rows"] if r["name"] == "smoothcache")
    args = argparse.Namespace(resume=False, no_compile=False, quiet=True)
    out = compare_peers.run_row(cfg, row, None, tmp_path, args)  # no worker is started
    assert out["eager"]["status"] == f"skipped: {reason}" and out["compile"]["status"] == out["eager"]["status"]


# ---- ditcache's adaptive rows: decided per batch ------------------------------------------------------------
def test_adaptive_row_records_each_run_and_counts_its_blocks(full_output):
    full, _ = full_output
    schedule = parse_schedule({"kind": "adaptive", "steps": STEPS, "threshold": 0.5, "warmup": 1, "final": 1})
    model = fresh_model()
    method = peers.install({"name": "a", "method": "ditcache", "schedule": schedule}, model, SPEC, STEPS)
    counter = peers.CallCounter(model)
    requests = [REQUEST, SampleRequest((5,), STEPS, 4.0, 1, "ddim")]
    outs = [peers.run_sampling(method, SPEC, r) for r in requests]
    runs = method.info()["adaptive_runs"]
    counted = peers.count_summary(counter.calls, SPEC, 1, 2)["blocks_run_each_run"]
    assert [r["model_batch"] for r in runs] == [4, 2]  # CFG doubles the batch
    assert [r["blocks_run"] for r in runs] == counted  # the dispatcher's decisions and the counted calls agree
    assert runs[0]["replayed_steps"] and min(counted) < STEPS * SPEC.num_blocks
    assert all(1 <= s < STEPS - 1 for r in runs for s in r["replayed_steps"])  # warm-up and final computed
    assert not torch.allclose(outs[0], full)
    from ditcache.benchmarks.peer_adaptive import summary

    assert "model batch 2:" in summary(method.info(), "eager") and summary({}, "eager") is None


@pytest.mark.slow
def test_compile_phase_adaptive_and_smoothcache(tmp_path):
    """Compiled: the adaptive row's three programs are whole graphs (no break, no steady recompile) and decide as
    the eager run does; SmoothCache's helper counts steps in Python, which dynamo specializes: a graph per step."""
    from safetensors.torch import save_file

    from ditcache.benchmarks.peer_worker import phase_compile

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in fresh_model().state_dict().items()
               if not k.endswith("pos_embed.pos_embed")}, str(weights))
    sched = {"kind": "adaptive", "steps": STEPS, "threshold": 0.5, "warmup": 1, "final": 1}
    job = {"phase": "compile", "row": {"name": "a", "method": "ditcache", "schedule": sched}, "model": "dit-tiny",
           "weights": str(weights), "steps": STEPS, "scheduler": "ddim", "guidance": 4.0, "seed": 0,
           "timing": {"classes": [3, 7], "repeats": 1}, "compile_repeats": 1,
           "calibration": {"classes": [1, 2], "seed": 100}}
    result = phase_compile(job)
    assert result["status"] == "ok", result
    assert result["graph_breaks"] == 0 and result["steady_recompiles"] == 0
    compiled_runs = result["info"]["adaptive_runs"]
    model = fresh_model()
    eager = peers.install({"name": "a", "method": "ditcache", "schedule": parse_schedule(sched)}, model, SPEC, STEPS)
    peers.run_sampling(eager, SPEC, REQUEST)
    assert [r["replayed_steps"] for r in compiled_runs] == [eager.info()["adaptive_runs"][0]["replayed_steps"]] * 2
    if smoothcache_missing is None:
        job["row"] = {"name": "sc", "method": "smoothcache", "alpha": 0.5}
        result = phase_compile(job)
        assert result["status"] == "ok", result
        assert result["recompiles"] > 0 and result["steady_recompiles"] == 0
