"""The reference-model trainer's learning-rate rule, exact resume, and the FID-vs-steps curve file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ditcache.benchmarks import fid_curve
from ditcache.benchmarks.train_state import LRRule, default_state_file

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAINER = Path(__file__).resolve().parents[2] / "benchmarks" / "train_reference.py"


def test_cosine_rule_warms_up_then_decays_to_the_floor():
    rule = LRRule(3e-4, 10, "cosine", 1e-5, start_step=100, end_step=210)
    assert rule.at(100) == pytest.approx(3e-5)  # the first update of the continued run
    assert rule.at(109) == pytest.approx(3e-4)  # warm-up done
    assert rule.at(110) == pytest.approx(3e-4)  # decay starts at the peak
    assert rule.at(160) == pytest.approx(1e-5 + 0.5 * (3e-4 - 1e-5))  # half way: the mean of peak and floor
    assert rule.at(210) == pytest.approx(1e-5) and rule.at(500) == pytest.approx(1e-5)
    values = [rule.at(s) for s in range(110, 211)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone after the warm-up
    assert LRRule(3e-4, 10).at(10_000) == 3e-4  # constant


def test_bad_rules_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="needs --max-steps"):
        LRRule(3e-4, 100, "cosine", 0.0, start_step=4521, end_step=4600)
    with pytest.raises(ValueError, match="--lr-min"):
        LRRule(3e-4, 0, "cosine", 1e-3, end_step=10)
    with pytest.raises(ValueError, match="use one of constant, cosine"):
        LRRule(3e-4, 0, "linear")


def test_state_file_sits_beside_the_weights_hidden(tmp_path):
    assert default_state_file(str(tmp_path / "dit-fmnist")) == tmp_path / ".dit-fmnist.train-state.pt"


def test_curve_points_round_trip_and_bad_names(tmp_path):
    points = {4521: fid_curve.parse_known("4521=69.67:quality_fmnist/results.json"),
              6021: fid_curve.CurvePoint(6021, 41.5, 0.4, 2000, "step-006021.safetensors")}
    fid_curve.save(tmp_path, points, 12.3, "python benchmarks/fid_curve.py ...")
    again = fid_curve.load_points(tmp_path)
    assert again == points
    table = (tmp_path / "fid_curve.md").read_text()
    assert table.index("| 4521 |") < table.index("| 6021 |") and "floor at N = 2000: 12.30" in table
    assert fid_curve.step_of(Path("x/step-006021.safetensors")) == 6021
    with pytest.raises(SystemExit, match="step-<step>.safetensors"):
        fid_curve.step_of(Path("weights.safetensors"))
    with pytest.raises(SystemExit, match="STEP=FID"):
        fid_curve.parse_known("4521:69.7")
    assert fid_curve._shown("/elsewhere/history/step-000500.safetensors") == "<history>/step-000500.safetensors"


def _train(tmp_path: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TRAINER), "--threads", "1", "--batch-size", "4", "--max-steps", "6",
               "--warmup-steps", "1", "--lr-schedule", "cosine", "--lr-min", "1e-5", "--ckpt-every", "3",
               "--log-every", "1", "--sample-at-end", "0", "--seed", "3", "--out-dir", str(tmp_path / name / "w"),
               "--results-dir", str(tmp_path / name / "r"), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.e2e
@pytest.mark.skipif(not FMNIST_DIR.is_dir(),
                    reason="Fashion-MNIST idx files not installed (apt-get install dataset-fashion-mnist)")
def test_a_run_stopped_and_resumed_equals_the_uninterrupted_run(tmp_path):
    """Stop at step 3 of a 6-step cosine run, resume: same EMA weights bit for bit, same loss log (1 thread)."""
    from safetensors.torch import load_file

    _train(tmp_path, "straight")
    stopped = _train(tmp_path, "pieces", "--stop-at-step", "3")
    assert "stop=stop-at-step step=3" in stopped.stdout
    resumed = _train(tmp_path, "pieces", "--resume")
    assert "resuming step 3" in resumed.stdout
    a = load_file(str(tmp_path / "straight" / "w" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "pieces" / "w" / "diffusion_pytorch_model.safetensors"))
    assert all(bool((a[k] == b[k]).all()) for k in a)
    rows = lambda name: [r.split(",")[:4] for r in (tmp_path / name / "r" / "loss.csv").read_text().splitlines()]
    assert rows("straight") == rows("pieces") and len(rows("straight")) == 7  # header + 6 steps, none twice
    meta = json.loads((tmp_path / "pieces" / "w" / "training.json").read_text())
    assert meta["optimizer"]["lr_schedule"] == "cosine" and meta["step"] == 6
    want = LRRule(3e-4, 1, "cosine", 1e-5, 0, 6).at(5)  # the last update's rate, logged with 4 digits
    assert math.isclose(float(rows("pieces")[-1][3]), want, rel_tol=1e-3) and want < 1e-4


def test_resume_without_a_state_says_how_to_start(tmp_path):
    done = subprocess.run([sys.executable, str(TRAINER), "--resume", "--out-dir", str(tmp_path / "w"),
                           "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no training state" in done.stderr and "without --resume" in done.stderr


@pytest.mark.e2e
@pytest.mark.skipif(not FMNIST_DIR.is_dir(),
                    reason="Fashion-MNIST idx files not installed (apt-get install dataset-fashion-mnist)")
def test_a_resumed_run_can_end_its_decay_earlier_and_says_so(tmp_path):
    _train(tmp_path, "short", "--stop-at-step", "3")
    _train(tmp_path, "short", "--resume", "--retarget-decay", "--max-steps", "5")
    meta = json.loads((tmp_path / "short" / "w" / "training.json").read_text())
    assert meta["step"] == 5 and meta["optimizer"]["decay_to_step"] == 5
    assert meta["lr_retargeted"] == [{"at_step": 3, "from_end_step": 6, "to_end_step": 5}]
