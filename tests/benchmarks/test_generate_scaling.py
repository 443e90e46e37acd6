"""The scaling benchmark runs 1-rank and torchrun configurations and saves a table (tiny model, 8 samples)."""

from __future__ import annotations

import json

import pytest
import yaml

from ditcache.benchmarks.generate_scaling import main


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scaling_run_saves_identical_runs(tmp_path):
    schedule = tmp_path / "s.yaml"
    schedule.write_text(yaml.safe_dump({"kind": "full", "steps": 2}))
    out = tmp_path / "results"
    assert main(["--model", "dit-tiny", "--random-weights", "--schedule", str(schedule), "--num-samples", "8",
                 "--chunk-size", "2", "--nproc", "2", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert [r["summary"]["world_size"] for r in record["runs"]] == [1, 1, 2]
    assert len({r["sha256"] for r in record["runs"]}) == 1
    assert record["runs"][1]["summary"]["ranks"][0]["threads"] == 1
    assert sorted(k["chunks"] for k in record["runs"][2]["summary"]["ranks"]) == [2, 2]
    text = (out / "results.md").read_text()
    assert "| 2 ranks (torchrun) | 2 x 1 | 8 |" in text
