"""Closed-form scale/shift: exact on affine data, and it brings a cached run closer to the full one."""

from __future__ import annotations

import dataclasses

import torch

from ditcache.cli import main
from ditcache.compiler.runtime.sampling import model_denoiser, sample
from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections, least_squares_affine
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import get_spec, load_schedule, parse_schedule
from ditcache.graphs.planning import plan_for

SCHEDULE = {"kind": "block-cache", "steps": 8, "recompute": {1: [0, 4], 2: [0, 3, 6], 3: [0]}}


def test_least_squares_affine():
    x = torch.randn(3, 7, 4)
    scale, shift = least_squares_affine(x, x * torch.tensor([2.0, -1.0, 0.5, 1.0]) + 3)
    torch.testing.assert_close(scale, torch.tensor([2.0, -1.0, 0.5, 1.0]))
    torch.testing.assert_close(shift, torch.full((4,), 3.0))
    flat = torch.ones(3, 7, 2)
    scale, shift = least_squares_affine(flat, flat + torch.randn(3, 7, 2))
    torch.testing.assert_close(scale, torch.ones(2))


def test_fitted_correction_moves_the_cached_run_towards_full(tiny_model, tiny_spec, tmp_path):
    plan = plan_for(parse_schedule(SCHEDULE), tiny_spec)
    request = calibration_request([1, 2, 3], [0], 8, 4.0, "ddim")
    tensors = fit_corrections(tiny_model, tiny_spec, plan, request)
    assert set(tensors) == {f"{k}.b{i}" for k in ("scale", "shift") for i in (1, 2, 3)}
    assert torch.equal(tensors["scale.b1"][4], torch.ones(32))  # a computed step keeps the identity
    full = sample(model_denoiser(tiny_model), tiny_spec, request)
    plain = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, plan), tiny_spec, request)
    corrected_plan = dataclasses.replace(plan, corrected=True)
    corrected = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, corrected_plan, tensors), tiny_spec, request)
    err_plain = (plain - full).pow(2).mean()
    err_corrected = (corrected - full).pow(2).mean()
    assert err_corrected < 0.9 * err_plain, (err_corrected, err_plain)  # random weights: 0.46 vs 0.56 seen


def test_cli_fit_correction_writes_a_usable_schedule(tmp_path, capsys):
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCHEDULE))
    assert main(["fit-correction", "--model", "dit-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--classes", "1", "2", "--seeds", "0", "--out", str(tmp_path / "c.safetensors"), "--quiet"]) == 0
    schedule = load_schedule(tmp_path / "s-corrected.yaml")
    assert schedule.corrections == (tmp_path / "c.safetensors").resolve()
    assert yaml.safe_load((tmp_path / "s-corrected.yaml").read_text())["scale_shift"] == "c.safetensors"  # relative
    assert plan_for(schedule, get_spec("dit-tiny")).corrected
    assert main(["sample", "--model", "dit-tiny", "--random-weights", "--schedule", str(tmp_path / "s-corrected.yaml"),
                 "--classes", "1", "--quiet", "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
