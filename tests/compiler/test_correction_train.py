"""Trained scale/shift: lowers the output error it trains on, touches only replay steps, leaves the model as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ditcache.cli import main
from ditcache.compiler.runtime.sampling import model_denoiser, sample
from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections
from ditcache.compiler.calibration.correction_train import train_corrections
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import get_spec, load_schedule, parse_schedule
from ditcache.graphs.planning import plan_for

SCHEDULE = {"kind": "block-cache", "steps": 8, "recompute": {1: [0, 4], 2: [0, 3, 6], 3: [0]}}


@pytest.fixture(scope="module")
def plan(tiny_spec):
    return plan_for(parse_schedule(SCHEDULE), tiny_spec)


@pytest.fixture(scope="module")
def request_():
    return calibration_request([1, 2, 3], [0], 8, 4.0, "ddim")


def test_training_lowers_the_output_error_and_the_sampling_error(tiny_model, tiny_spec, plan, request_):
    flags = [p.requires_grad for p in tiny_model.parameters()]
    tensors, log = train_corrections(tiny_model, tiny_spec, plan, request_, epochs=15, lr=2e-2)
    assert [p.requires_grad for p in tiny_model.parameters()] == flags
    assert len(log.epoch_losses) == 15
    assert log.final_loss < 0.8 * log.initial_loss, log
    assert set(tensors) == {f"{k}.b{i}" for k in ("scale", "shift") for i in (1, 2, 3)}
    assert torch.equal(tensors["scale.b1"][4], torch.ones(32))  # b1 computes at step 4: never trained
    assert torch.equal(tensors["shift.b3"][0], torch.zeros(32))  # step 0 computes everything
    assert not torch.equal(tensors["scale.b1"][5], torch.ones(32))  # a replay step was trained

    full = sample(model_denoiser(tiny_model), tiny_spec, request_)
    plain = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, plan), tiny_spec, request_)
    corrected_plan = dataclasses.replace(plan, corrected=True)
    trained = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, corrected_plan, tensors), tiny_spec, request_)
    err_plain, err_trained = (plain - full).pow(2).mean(), (trained - full).pow(2).mean()
    assert err_trained < 0.9 * err_plain, (err_trained, err_plain)
    assert not torch.allclose(trained, full)  # still a cached run


def test_zero_epochs_returns_the_starting_point(tiny_model, tiny_spec, plan, request_):
    init = fit_corrections(tiny_model, tiny_spec, plan, request_)
    tensors, log = train_corrections(tiny_model, tiny_spec, plan, request_, init=init, epochs=0)
    for k in init:
        torch.testing.assert_close(tensors[k], init[k])
    assert log.epoch_losses == () and log.initial_loss == log.final_loss > 0


def test_a_plan_without_replays_is_refused(tiny_model, tiny_spec, request_):
    with pytest.raises(ValueError, match="replays nothing"):
        train_corrections(tiny_model, tiny_spec, plan_for(parse_schedule({"kind": "full", "steps": 8}), tiny_spec),
                          request_)


def test_cli_trained_correction(tmp_path, capsys):
    import yaml
    from safetensors import safe_open

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SCHEDULE))
    assert main(["fit-correction", "--model", "dit-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--classes", "1", "2", "--seeds", "0", "--method", "trained", "--epochs", "2", "--init", "identity",
                 "--out", str(tmp_path / "c.safetensors"), "--quiet"]) == 0
    assert "after 2 epochs" in capsys.readouterr().out
    with safe_open(str(tmp_path / "c.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "trained" and meta["init"] == "identity" and meta["epochs"] == "2"
    schedule = load_schedule(tmp_path / "s-corrected.yaml")
    assert plan_for(schedule, get_spec("dit-tiny")).corrected
    with pytest.raises(SystemExit):
        main(["fit-correction", "--model", "dit-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
              "--method", "trained", "--epochs", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_the_trained_fit_compares_predictions_not_a_slice_of_tokens():
    """DiT drops its learned-sigma channels; a flow model's packed (B, T, C) output is compared whole (slicing its
    second axis to in_channels would keep the first C tokens: FLUX.1-dev's 4096 tokens cut to 64)."""
    from ditcache.compiler.runtime.sampling import noise_prediction
    from ditcache.graphs import get_spec

    dit, flux = get_spec("dit-tiny"), get_spec("flux-tiny")
    out = torch.randn(2, 2 * dit.in_channels, 8, 8)  # (B, 2C, H, W)
    torch.testing.assert_close(noise_prediction(out, dit), out[:, : dit.in_channels])
    packed = torch.randn(2, 3 * flux.in_channels, flux.in_channels)  # (B, T, C), T > C
    assert noise_prediction(packed, flux) is packed
