"""Adaptive calibration: the measured output change curve against an independent loop, the rescale fit, and the
threshold solved for a target speedup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditcache.compiler.calibration.adaptive import measure_adaptive, speedup_at, threshold_for_speedup
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.graphs.adaptive import AdaptivePolicy
from ditcache.graphs.adaptive_curves import AdaptiveCurves, AdaptiveCurvesError

STEPS = 8


def requests():
    return [SampleRequest((1, 2), STEPS, 4.0, s, "ddim") for s in (0, 1)]


def test_measured_output_change_and_fit(tiny_model, tiny_spec, tmp_path):
    curves = measure_adaptive(tiny_model, tiny_spec, requests(), "modulated-input", weights_sha256="abc")
    # independent: the diffusers model's own outputs, consecutive-step relative L1 per row, averaged
    outputs: list[torch.Tensor] = []
    sums = np.zeros(STEPS)
    denoise = model_denoiser(tiny_model)

    def recording(inputs):
        out = denoise(inputs)
        outputs.append(out)
        return out

    for request in requests():
        outputs.clear()
        sample(recording, tiny_spec, request)
        for s in range(1, STEPS):
            a, b = outputs[s], outputs[s - 1]
            sums[s] += float(((a - b).flatten(1).abs().sum(1) / b.flatten(1).abs().sum(1)).sum())
    rows = 4 * len(requests())  # 4 model rows per run (2 images under guidance)
    np.testing.assert_allclose(curves.output[1:], sums[1:] / rows, rtol=1e-4)
    assert curves.count == (STEPS - 1) * 4 * 2 and len(curves.rescale) == 5
    # the fit beats the identity on the data it was fitted on (the identity is one of the candidates)
    x, y = np.array(curves.probe[1:]), np.array(curves.output[1:])
    fitted = np.polyval(curves.rescale, x)
    assert np.abs(fitted - y).mean() < np.abs(x - y).mean()
    path = tmp_path / "adaptive.json"
    path.write_text(curves.to_json())
    assert AdaptiveCurves.load(path) == curves
    path.write_text('{"format": "other"}')
    with pytest.raises(AdaptiveCurvesError, match="calibrate --adaptive"):
        AdaptiveCurves.load(path)


def test_threshold_for_a_target_speedup(tiny_model, tiny_spec):
    policy = AdaptivePolicy(steps=STEPS, threshold=0.0, signal="first-block", max_consecutive=2)
    threshold, speedup = threshold_for_speedup(tiny_model, tiny_spec, policy, requests(), 1.2, grid=8, refine=3)
    assert speedup >= 1.2 and threshold > 0
    assert speedup_at(tiny_model, tiny_spec, policy, requests()) == 1.0  # threshold 0 never replays
    with pytest.raises(ValueError, match="out of reach"):
        threshold_for_speedup(tiny_model, tiny_spec, policy, requests(), 5.0)
