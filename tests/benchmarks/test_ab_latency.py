"""Interleaved A/B latency on two tiny eager engine directories (correctness of the tool, not speed)."""

import json

import pytest

from ditcache.benchmarks.ab_latency import abba_order, main
from ditcache.export.export_engines import ExportRequest, export_engines

DELTA = "kind: delta-dit\nsteps: 4\nboundary: 2\ninterval: 2\ncached_blocks: 2\n"


def test_abba_order_balances_positions():
    assert abba_order(2, 2) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert abba_order(3, 1) == [0, 1, 2, 2, 1, 0]


def _export(tmp_path, name, schedule_text):
    schedule = tmp_path / f"{name}.yaml"
    schedule.write_text(schedule_text)
    export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / name, backend="eager",
                                 random_weights=True, batch_size=2), log=lambda m: None, progress=False)
    return tmp_path / name


def test_ab_latency_writes_a_table_per_candidate(tmp_path, capsys):
    full = _export(tmp_path, "full", "kind: full\nsteps: 4\n")
    delta = _export(tmp_path, "delta", DELTA)
    out = tmp_path / "ab"
    assert main(["--engines", str(full), str(delta), "--labels", "full", "delta", "--classes", "1", "2",
                 "--guidance", "2", "--rounds", "1", "--out", str(out)]) == 0
    document = json.loads((out / "results.json").read_text())
    full_row, delta_row = document["candidates"]
    assert full_row["runs"] == delta_row["runs"] == 2 and len(delta_row["seconds"]) == 2
    assert set(full_row["step_ms"]) == {"full"}
    assert len(delta_row["step_ms"]) > 1  # the cached schedule ran other variants than full
    assert "| delta |" in (out / "results.md").read_text()


def test_ab_latency_refuses_different_step_counts(tmp_path):
    a = _export(tmp_path, "a", "kind: full\nsteps: 4\n")
    b = _export(tmp_path, "b", "kind: full\nsteps: 3\n")
    with pytest.raises(SystemExit, match="different step counts"):
        main(["--engines", str(a), str(b), "--classes", "1", "2", "--out", str(tmp_path / "ab")])
