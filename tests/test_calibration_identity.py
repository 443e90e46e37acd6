"""A schedule made from one model's change curves is refused for another model on every entry point, before any
work, with a message naming the calibrated model and the fix (dit-fmnist and dit-b both have 12 blocks: only the
calibration identity tells them apart)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import ditcache
from ditcache.cli import main
from ditcache.graphs import ScheduleError, get_spec

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = str(ROOT / "schedules" / "fmnist-calibrated" / "blockcache-1.3x.yaml")
REFUSAL = "its curves were calibrated on dit-fmnist, not dit-b: use it with --model dit-fmnist, or calibrate dit-b"


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert REFUSAL in err and "blockcache-1.3x.yaml" in err and "Traceback" not in err, err
    return err


def test_show_plan(capsys):
    refused(capsys, ["show-plan", "--model", "dit-b", "--schedule", SCHEDULE])
    assert main(["show-plan", "--model", "dit-fmnist", "--schedule", SCHEDULE]) == 0  # its own model: fine
    assert "dit-fmnist (12 blocks)" in capsys.readouterr().out


def test_export_engines(tmp_path, capsys):
    refused(capsys, ["export-engines", "--model", "dit-b", "--random-weights", "--schedule", SCHEDULE,
                     "--backend", "eager", "--out", str(tmp_path / "eng"), "--quiet"])
    assert not (tmp_path / "eng").exists()  # refused before any work


def test_fit_correction(tmp_path, capsys):
    refused(capsys, ["fit-correction", "--model", "dit-b", "--random-weights", "--schedule", SCHEDULE,
                     "--out", str(tmp_path / "c.safetensors"), "--schedule-out", str(tmp_path / "s.yaml"), "--quiet"])
    assert list(tmp_path.iterdir()) == []


def test_sample_also_checks_the_sampler_up_front(tmp_path, capsys):
    refused(capsys, ["sample", "--model", "dit-b", "--random-weights", "--schedule", SCHEDULE,
                     "--out", str(tmp_path / "o"), "--quiet"])
    assert main(["sample", "--model", "dit-fmnist", "--random-weights", "--schedule", SCHEDULE, "--scheduler",
                 "dpm++", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "calibrated with sampler 'ddim', the request uses 'dpm++'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_apply():
    pipe = SimpleNamespace(transformer=SimpleNamespace(config=dict(get_spec("dit-b").config)), unet=None)
    with pytest.raises(ScheduleError, match=REFUSAL):
        ditcache.apply(pipe, SCHEDULE)
    with pytest.raises(ScheduleError, match=REFUSAL):
        ditcache.apply(pipe, ditcache.BlockCacheConfig.from_file(SCHEDULE))
