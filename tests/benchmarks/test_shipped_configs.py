"""Every shipped benchmark config parses, its schedules plan on its model, and its rows build (what --dry-run
prints), so a broken schedule path or a schedule that does not fit the model fails here, not in a long run; and
where a config's results are saved, today's plans still give the MACs those results were measured with (a saved
row whose schedule now plans differently has changed meaning)."""

import json
from pathlib import Path

import pytest

from ditcache.benchmarks.bench_config import build_rows, load_config
from ditcache.benchmarks.run_benchmarks import plan_numbers

ROOT = Path(__file__).resolve().parents[2]
# peers-*.yaml are compare_peers configs, engines-*.yaml engines_bench configs (other formats, tested in
# test_peers.py and test_engines_bench.py)
CONFIGS = sorted(p for p in (ROOT / "benchmarks" / "configs").glob("*.yaml")
                 if not p.name.startswith(("peers-", "engines-")))


def _saved_rows(name: str) -> dict[str, dict]:
    """Rows of benchmarks/results/<config name>/results.json by id (empty when the config was never run)."""
    path = ROOT / "benchmarks" / "results" / name / "results.json"
    return {r["id"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_plans_every_row(path):
    cfg = load_config(path)
    rows = build_rows(cfg)
    assert rows, f"{path.name}: no rows"
    saved = _saved_rows(cfg.name)
    for row in rows:
        numbers = plan_numbers(cfg, row)
        if numbers["schedule_kind"] == "full":
            assert numbers["theoretical_speedup"] == 1.0 and numbers["variants"] == ["full"], (row.id, numbers)
        else:  # a cached schedule that skips nothing is a broken config
            assert numbers["theoretical_speedup"] > 1.0 and len(numbers["variants"]) > 1, (row.id, numbers)
        if row.id in saved and saved[row.id].get("gmacs_per_image") is not None:
            was = saved[row.id]
            assert numbers["steps"] == was["steps"], (row.id, numbers["steps"], was["steps"])
            assert numbers["gmacs_per_image"] == pytest.approx(was["gmacs_per_image"], rel=1e-9), row.id
            assert numbers["theoretical_speedup"] == pytest.approx(was["theoretical_speedup"], rel=1e-9), row.id


def test_saved_results_are_checked():
    """The MAC comparison above really runs: the saved CPU tables are found and cover their configs' rows."""
    assert len(_saved_rows("cpu-dit-xl")) >= 20 and len(_saved_rows("cpu-pixart")) >= 10


@pytest.mark.parametrize("model, pipeline", [("dit-xl", "DiTPipeline"), ("flux-dev-d2s4", "FluxPipeline"),
                                             ("sd3-medium", "StableDiffusion3Pipeline")])
def test_the_results_name_the_stock_pipeline_of_the_models_family(model, pipeline):
    from ditcache.benchmarks.run_benchmarks import baseline_note

    note = baseline_note(model)
    assert f"diffusers {pipeline}.__call__" in note
    assert ("prompt embeddings" in note) == (pipeline != "DiTPipeline")
