"""The adaptive kind on the command line: show-plan (fixed vs decided, MACs bounds), sample/run --show-decisions,
calibrate --adaptive and auto-schedule --kind adaptive."""

from __future__ import annotations

import json

import yaml

from ditcache.cli import main
from ditcache.graphs import costs_for, get_spec

SCHEDULE = "kind: adaptive\nsteps: 8\nsignal: first-block\nthreshold: 0.3\nwarmup: 2\nfinal: 1\nmax_consecutive: 2\n"


def test_show_plan_says_what_is_decided_at_run_time(capsys, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(SCHEDULE)
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", str(path)]) == 0
    out = capsys.readouterr().out
    assert "decided at run time" in out and "fixed steps: [0, 1, 7]" in out and "at most 4 replayed" in out
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    costs = costs_for(get_spec("dit-tiny"))
    # 5 decided steps, at most 2 in a row: replay, replay, compute, replay, replay -> 4 replays of blocks [1, 4)
    assert data["macs_bounds"] == {"min": 8 * costs.full - 4 * costs.blocks_range(1, 4), "max": 8 * costs.full}
    assert data["decided_steps"] == [2, 3, 4, 5, 6] and data["programs"] == ["probe", "compute", "replay"]


def test_sample_shows_and_writes_the_decisions(capsys, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(SCHEDULE)
    out = tmp_path / "samples"
    assert main(["sample", "--model", "dit-tiny", "--random-weights", "--schedule", str(path), "--classes", "1", "2",
                 "--out", str(out), "--quiet", "--show-decisions"]) == 0
    text = capsys.readouterr().out
    assert "warm-up/final" in text and "steps replayed" in text
    decisions = json.loads((out / "decisions.json").read_text())
    assert [d["step"] for d in decisions] == list(range(8))
    assert any(d["program"] == "replay" for d in decisions)


def test_run_shows_the_decisions_of_an_engine_directory(capsys, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(SCHEDULE)
    assert main(["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", str(path), "--backend",
                 "eager", "--out", str(tmp_path / "eng"), "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", "1", "2", "--out", str(tmp_path / "o"),
                 "--show-decisions"]) == 0
    assert "steps replayed" in capsys.readouterr().out
    assert (tmp_path / "o" / "decisions.json").is_file()


def test_calibrate_and_auto_schedule_adaptive(capsys, tmp_path):
    calibration = tmp_path / "adaptive.json"
    assert main(["calibrate", "--model", "dit-tiny", "--random-weights", "--steps", "8", "--seeds", "0", "1",
                 "--classes", "1", "2", "--adaptive", "first-block", "--out", str(calibration), "--quiet"]) == 0
    data = json.loads(calibration.read_text())
    assert data["signal"] == "first-block" and len(data["rescale"]) == 5 and data["replay"] == [1, 4]
    out = tmp_path / "s.yaml"
    assert main(["auto-schedule", "--kind", "adaptive", "--calibration", str(calibration), "--random-weights",
                 "--target-speedup", "1.2", "--max-consecutive", "2", "--out", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    assert written["kind"] == "adaptive" and written["threshold"] > 0 and written["rescale"] == data["rescale"]
    assert "threshold solved for 1.2x" in out.read_text()
    assert main(["auto-schedule", "--kind", "adaptive", "--threshold", "0.1", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "--calibration FILE" in capsys.readouterr().err
