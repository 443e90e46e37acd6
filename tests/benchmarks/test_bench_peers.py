"""Peer rows of the benchmark runner (benchmarks/bench_peers.py, benchmarks/flow_peers.py), fast parts: the config
groups and their rows, the references and report cells, and the PeerRunner in this process on flux-tiny and
wan-tiny (FirstBlockCache; cache-dit patches pipeline classes, so DBCache runs only in the runner's own processes:
tests/benchmarks/test_run_benchmarks_flow.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from ditcache.benchmarks.bench_config import ConfigError, build_rows, load_config, parse_config
from ditcache.benchmarks.bench_report import MD_HEADER, derive, markdown_table
from ditcache.benchmarks.run_benchmarks import availability

pytest.importorskip("transformers", reason="diffusers' pipelines (the stock rows) need transformers")

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


def test_peer_groups_become_rows_with_ids_backends_and_references():
    rows = {r.id: r for r in build_rows(load_config(CONFIGS / "tiny-flux.yaml"))}
    fbc, db = rows["fbc-0.6/fp32/full-6"], rows["dbcache-F1B0-0.6/fp32/full-6"]
    assert (fbc.kind, fbc.backend, fbc.peer) == ("peer", "fbc", {"method": "fbc", "threshold": 0.6, "compiled": False})
    assert db.peer == {"method": "dbcache", "threshold": 0.6, "compiled": False, "Fn": 1, "Bn": 0, "warmup": 1}
    assert rows["diffusers+compile/bf16/full-6"].peer["method"] == "none"
    assert rows["fbc-1.0+compile/bf16/full-6"].backend == "fbc+compile"
    assert rows["diffusers/fp32/full-6"].peer is None and rows["eager/fp32/full-6"].kind == "ditcache-eager"
    assert len({r.key() for r in rows.values()}) == len(rows)  # --resume tells every row apart


@pytest.mark.parametrize("group, message", [
    ({"peer": "teacache", "thresholds": [0.1]}, "not one of"),
    ({"peer": "fbc"}, "needs 'thresholds"),
    ({"peer": "none", "thresholds": [0.1]}, "takes no thresholds"),
    ({"peer": "fbc", "thresholds": [0.1], "schedule": "delta-6"}, "not full"),
    ({"peer": "fbc", "thresholds": [0.1], "treshold": 1}, "unknown key 'treshold'"),
    ({"peer": "fbc", "thresholds": [0.1], "precisions": ["int8"]}, "precisions must be"),
])
def test_peer_group_errors_say_the_fix(group, message):
    data = yaml.safe_load((CONFIGS / "tiny-flux.yaml").read_text())
    data["matrix"] = [data["matrix"][0], group]
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "x.yaml")


def test_unsupported_peers_are_skipped_with_the_reason():
    """diffusers 0.42.1's FirstBlockCache cannot run on SD3 (no CacheMixin; the hooks fail at the last block)."""
    rows = {r.id: r for r in build_rows(load_config(CONFIGS / "tiny-sd3.yaml"))}
    assert "does not support SD3Transformer2DModel" in availability(rows["fbc-0.6/fp32/full-6"])
    assert availability(rows["dbcache-F1B0-0.6/fp32/full-6"]) is None
    assert availability(rows["diffusers+compile/bf16/full-6"]) is None


def _row(id_, kind, backend, precision, latency, peer=None, **extra):
    return {"id": id_, "status": "ok", "kind": kind, "backend": backend, "precision": precision, "steps": 6,
            "schedule_kind": "full", "latency_median_s": latency, "latency_min_s": latency,
            "latency_max_s": latency, "theoretical_speedup": 1.0, "peer": peer,
            "blocks_run": 24, "blocks_full": 24, "notes": [], **extra}


def test_references_of_peer_rows_and_their_report_cells():
    """Eager peers against the stock row, compiled peers against the uncached stock pipeline under torch.compile;
    uncounted rows leave efficiency empty; the table shows blocks and dynamo's counters."""
    none = {"method": "none", "compiled": True, "threshold": None}
    rows = [
        _row("diffusers/fp32/full-6", "stock", "diffusers", "fp32", 4.0),
        _row("fbc-0.05/fp32/full-6", "peer", "fbc", "fp32", 2.0, {"method": "fbc", "compiled": False,
                                                                   "threshold": 0.05},
             blocks_run=12, theoretical_speedup=2.5),
        _row("diffusers+compile/bf16/full-6", "peer", "diffusers+compile", "bf16", 1.0, none, graph_breaks=0,
             recompiles=0, steady_recompiles=0),
        _row("fbc-0.12+compile/bf16/full-6", "peer", "fbc+compile", "bf16", 0.5,
             {"method": "fbc", "compiled": True, "threshold": 0.12}, theoretical_speedup=None, blocks_run=None,
             graph_breaks=3, recompiles=7, steady_recompiles=0),
    ]
    latents = {r["id"]: torch.full((1, 4), float(i + 1)) + torch.arange(4.0) for i, r in enumerate(rows)}
    derive(rows, lambda r: latents[r["id"]])
    by_id = {r["id"]: r for r in rows}
    eager, uncached, compiled = (by_id[k] for k in ("fbc-0.05/fp32/full-6", "diffusers+compile/bf16/full-6",
                                                    "fbc-0.12+compile/bf16/full-6"))
    assert eager["full_reference"] == "diffusers/fp32/full-6" and eager["speedup_vs_full"] == 2.0
    assert eager["efficiency"] == pytest.approx(0.8) and eager["psnr_vs_full_db"] < 100
    assert uncached["full_reference"] == "diffusers/fp32/full-6" and uncached["speedup_vs_full"] == 4.0
    assert compiled["full_reference"] == "diffusers+compile/bf16/full-6" and compiled["speedup_vs_full"] == 2.0
    assert compiled["efficiency"] is None and compiled["speedup_vs_stock"] == 8.0
    assert any("torch.compile" in n for n in compiled["notes"])
    table = markdown_table(rows).splitlines()
    assert "blocks run / full" in MD_HEADER and all(r["id"] in "\n".join(table) for r in rows)
    cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in table[2:]}
    blocks, dynamo = MD_HEADER.index("blocks run / full"), len(MD_HEADER) - 1
    assert cells["fbc-0.05/fp32/full-6"][blocks] == "12 / 24" and cells["fbc-0.12+compile/bf16/full-6"][blocks] == "–"
    assert cells["fbc-0.12+compile/bf16/full-6"][dynamo].rstrip(" |") == "3 / 7 (0)"


# ---- the PeerRunner in this process --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ditcache.benchmarks.bench_worker import phase_weights

    root = tmp_path_factory.mktemp("peer-weights")
    return {m: phase_weights({"model": m, "seed": 0, "out": str(root / f"{m}.safetensors")})["file"]
            for m in ("flux-tiny", "wan-tiny")}


def _runner(family: str, row_id: str, weights, work: Path):
    from ditcache.benchmarks.bench_worker import StockRunner, _schedule, _spec
    from ditcache.benchmarks.flow_peers import PeerRunner
    from ditcache.benchmarks.run_benchmarks import schedule_file

    row = next(r for r in build_rows(load_config(CONFIGS / f"tiny-{family}.yaml")) if r.id == row_id)
    row.weights = weights[f"{family}-tiny"]
    schedule = _schedule({"schedule_file": schedule_file(row, work)})  # an inline schedule is written there
    return (PeerRunner if row.peer else StockRunner)(row, _spec(row), schedule, torch.float32)


def _decisions(runner) -> list[bool]:
    """FirstBlockCache's own compute/skip decision of every call, recorded from its head-block hook."""
    from ditcache.graphs import parts_for
    from ditcache.graphs.segments import block_modules

    first = block_modules(parts_for(runner.model, runner.spec))[0]
    hook = first._diffusers_hook.get_hook("fbc_leader_block_hook")
    decided, original = [], hook._should_compute_remaining_blocks

    def recording(residual):
        decided.append(original(residual))
        return decided[-1]

    hook._should_compute_remaining_blocks = recording
    return decided


@pytest.mark.parametrize("family, calls_per_step", [("flux", 1), ("wan", 2)])
def test_first_block_cache_on_the_stock_pipeline(weights, family, calls_per_step, tmp_path):
    """The row's output moves away from the stock pipeline's, its counted blocks are what FirstBlockCache itself
    decided, and WanPipeline's two calls per step keep one cache state each."""
    stock = _runner(family, "diffusers/fp32/full-6", weights, tmp_path)
    runner = _runner(family, "fbc-0.6/fp32/full-6", weights, tmp_path)
    decided = _decisions(runner)
    runner.warmup("variants")
    decided.clear()
    out = runner.run()
    counts = runner.measurements()["counts"]
    reference = stock.run()
    assert out.shape == reference.shape and not torch.equal(out, reference)
    torch.testing.assert_close(out, reference, rtol=0.5, atol=0.5)  # cached, not broken
    assert len(decided) == 6 * calls_per_step and not all(decided)
    blocks = stock.spec.num_blocks
    assert counts["blocks_run"] == pytest.approx(sum(blocks if d else 1 for d in decided) / calls_per_step)
    assert counts["blocks_full"] == 6 * blocks and counts["theoretical_speedup"] > 1
    assert runner.contexts == (["cond", "uncond"] if calls_per_step == 2 else ["cond"])
    if calls_per_step == 2:
        assert any("one FirstBlockCache state per context" in n for n in runner.notes)
    again = runner.run()  # the state is reset before every call: repeats are identical
    assert torch.equal(again, out)
