"""Every shipped benchmark config parses, its schedules plan on its model, and its rows build (what --dry-run
prints), so a broken schedule path or a schedule that does not fit the model fails here, not in a long run."""

from pathlib import Path

import pytest

from ditcache.benchmarks.bench_config import build_rows, load_config
from ditcache.benchmarks.run_benchmarks import plan_numbers

# peers-*.yaml are compare_peers configs (another format, tested in test_peers.py)
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[2] / "benchmarks" / "configs").glob("*.yaml")
                 if not p.name.startswith("peers-"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_plans_every_row(path):
    cfg = load_config(path)
    rows = build_rows(cfg)
    assert rows, f"{path.name}: no rows"
    for row in rows:
        numbers = plan_numbers(cfg, row)
        assert numbers["steps"] > 0 and numbers["theoretical_speedup"] >= 1.0, (path.name, row.id, numbers)
