"""Block caching's per-channel scale/shift on a U-Net: fitted (closed form) and trained on feature maps, channels on
dim 1 of (B, C, H, W), one width per attention layer."""

from __future__ import annotations

import dataclasses

import torch

from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections, least_squares_affine
from ditcache.compiler.calibration.correction_train import train_corrections
from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.compiler.runtime.sampling import model_denoiser, sample
from ditcache.graphs import get_spec, load_model, parse_schedule, parts_for
from ditcache.graphs.planning import plan_for

SCHEDULE = {"kind": "block-cache", "steps": 5, "recompute": {0: [0, 2], 1: [0], 4: [0, 3]}}  # 64, 128, 64 channels


def test_least_squares_on_feature_maps_fits_per_channel():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=gen)
    scale, shift = torch.tensor([1.0, 2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 2.0, -3.0])
    y = x * scale[:, None, None] + shift[:, None, None]
    got_scale, got_shift = least_squares_affine(x, y, channel_shape=(4, 1, 1))
    assert got_scale.shape == got_shift.shape == (4, 1, 1)
    torch.testing.assert_close(got_scale.flatten(), scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_shift.flatten(), shift, rtol=1e-5, atol=1e-5)


def test_fitted_and_trained_corrections_on_unet_fmnist():
    spec = get_spec("unet-fmnist")
    model, _ = load_model(spec, random_weights=True, seed=3)
    parts = parts_for(model, spec)
    plan = plan_for(parse_schedule(SCHEDULE), spec)
    request = calibration_request((1, 5), (0,), plan.num_steps, 4.0, "ddim")
    fitted = fit_corrections(model, spec, plan, request)
    for r in plan.ranges:
        assert fitted[f"scale.{r.name}"].shape == (plan.num_steps, *parts.channel_shape(r.start))
    assert fitted["scale.b1"].shape == (5, 128, 1, 1) and fitted["scale.b0"].shape == (5, 64, 1, 1)

    def error(corrections) -> float:
        corrected = dataclasses.replace(plan, corrected=corrections is not None)
        dispatcher = Dispatcher(corrected, eager_variants(parts, corrected), corrections)
        cached = sample(dispatcher, spec, SampleRequest((1, 5), plan.num_steps, 4.0, 0, sample_seeds=(0, 1)))
        return float((cached - full).pow(2).mean())

    full = sample(model_denoiser(model), spec, SampleRequest((1, 5), plan.num_steps, 4.0, 0, sample_seeds=(0, 1)))
    assert error(fitted) < error(None), "the fitted correction must bring the cached run closer to the full one"
    trained, log = train_corrections(model, spec, plan, request, init=None, epochs=2, lr=1e-2)
    assert trained["shift.b4"].shape == (5, 64, 1, 1) and log.final_loss < log.initial_loss
