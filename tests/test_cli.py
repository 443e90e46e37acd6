"""The ``ditcache`` command line: show-plan, sample, and its error handling (exit code 2, stderr)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from ditcache.cli import main
from ditcache.graphs import dit_costs, get_spec, parse_schedule

DELTA = {"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2, "cached_blocks": 2}


def write_schedule(tmp_path, data, name="schedule.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---- show-plan ---------------------------------------------------------------------------------------
def test_show_plan_table(capsys, tmp_path):
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, DELTA)]) == 0
    out = capsys.readouterr().out
    assert "dit-tiny (4 blocks)" in out
    assert "back-skipped" in out and "front-skipped" in out and "full+rec-back" in out
    assert "theoretical speedup" in out
    step_rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(step_rows) == DELTA["steps"]


def test_show_plan_full_schedule_default(capsys):
    assert main(["show-plan", "--model", "dit-tiny", "--steps", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == ["full"] * 3
    assert data["theoretical_speedup"] == pytest.approx(1.0)


def test_show_plan_json(capsys, tmp_path):
    path = write_schedule(tmp_path, DELTA)
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", path, "--batch", "2", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # nothing but JSON on stdout
    spec = get_spec("dit-tiny")
    costs = dit_costs(spec, 2)
    plan = parse_schedule(DELTA).to_plan(spec.num_blocks, costs)
    assert data["model"] == "dit-tiny"
    assert data["step_macs"] == plan.step_macs(costs)
    assert data["theoretical_speedup"] == pytest.approx(plan.theoretical_speedup(costs))
    assert data["theoretical_speedup"] > 1
    assert isinstance(data["plan_hash"], str) and len(data["plan_hash"]) == 64
    int(data["plan_hash"], 16)
    assert data["steps"] == [v.name for v in plan.steps]

    # the hash is stable across runs and changes with the schedule
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan_hash"] == data["plan_hash"]
    other = write_schedule(tmp_path, {**DELTA, "interval": 3}, "other.yaml")
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", other, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan_hash"] != data["plan_hash"]


def test_show_plan_needs_no_weights_for_dit_xl(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    schedule = write_schedule(tmp_path, {"kind": "delta-dit", "steps": 20, "target_speedup": 1.5})
    assert main(["show-plan", "--model", "dit-xl", "--schedule", schedule, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_blocks"] == 28 and data["theoretical_speedup"] >= 1.5


def test_invalid_schedule_key(capsys, tmp_path):
    bad = {**DELTA, "intervall": 2}
    del bad["interval"]
    code = main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, bad)])
    assert code == 2
    captured = capsys.readouterr()
    assert "'intervall'" in captured.err and "did you mean 'interval'" in captured.err
    assert captured.err.startswith("ditcache show-plan: error:")
    assert captured.out == ""


def test_missing_schedule_file(capsys, tmp_path):
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_show_plan_steps_contradict_schedule(capsys, tmp_path):
    code = main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, DELTA), "--steps", "5"])
    assert code == 2
    assert "--steps 5 contradicts" in capsys.readouterr().err


# ---- sample -------------------------------------------------------------------------------------------
def sample_args(out, *extra):
    return ["sample", "--model", "dit-tiny", "--random-weights", "--classes", "1", "2", "--quiet",
            "--out", str(out), *extra]


def read_latents(out):
    pt = torch.load(out / "latents.pt", weights_only=True)
    npy = np.load(out / "latents.npy")
    torch.testing.assert_close(torch.from_numpy(npy), pt, rtol=0, atol=0)
    return pt


def test_sample_random_weights(capsys, tmp_path):
    out = tmp_path / "full"
    assert main(sample_args(out, "--steps", "3")) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    assert "no image written" in captured.out
    latents = read_latents(out)
    spec = get_spec("dit-tiny")
    assert latents.shape == (2, spec.in_channels, spec.sample_size, spec.sample_size)
    assert torch.isfinite(latents).all()

    # same seed, same latents
    again = tmp_path / "again"
    assert main(sample_args(again, "--steps", "3")) == 0
    torch.testing.assert_close(read_latents(again), latents, rtol=0, atol=0)


def test_sample_with_delta_dit_schedule(capsys, tmp_path):
    schedule = write_schedule(tmp_path, DELTA)
    cached = tmp_path / "cached"
    assert main(sample_args(cached, "--schedule", schedule)) == 0
    assert "delta-dit schedule" in capsys.readouterr().out
    # --steps equal to the schedule's is accepted
    assert main(sample_args(tmp_path / "same", "--schedule", schedule, "--steps", "4")) == 0
    full = tmp_path / "full"
    assert main(sample_args(full, "--steps", "4")) == 0
    got, ref = read_latents(cached), read_latents(full)
    assert got.shape == ref.shape == (2, 4, 8, 8)
    assert not torch.equal(got, ref), "cached steps replayed nothing"
    torch.testing.assert_close(read_latents(tmp_path / "same"), got, rtol=0, atol=0)


def test_sample_steps_contradict_schedule(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(sample_args(out, "--schedule", write_schedule(tmp_path, DELTA), "--steps", "3"))
    assert code == 2
    err = capsys.readouterr().err
    assert "--steps 3 contradicts the schedule's steps: 4" in err
    assert not (out / "latents.pt").exists()


def test_sample_weight_errors_exit_2(capsys, tmp_path):
    base = ["sample", "--model", "dit-tiny", "--steps", "2", "--classes", "1", "--quiet", "--out", str(tmp_path)]
    assert main([*base, "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--weights", str(tmp_path), "--random-weights"]) == 2
    assert "not both" in capsys.readouterr().err


def test_sample_class_out_of_range(capsys, tmp_path):
    args = ["sample", "--model", "dit-tiny", "--random-weights", "--steps", "2", "--classes", "1000", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert "class 1000" in capsys.readouterr().err
