"""Per-stream scale/shift fits of the [text; image] families: the closed form recovers a known per-stream affine map
on synthetic data (a shared fit cannot); fit_corrections on sd3-tiny writes (steps, 2, D) tables, a text row fitted
on the text tokens (identity where the range is SD3's last block alone: its text offset is zero) and an image row on
the image tokens; the trained fit keeps that layout."""

from __future__ import annotations

import dataclasses

import torch

from ditcache.compiler.calibration.correction_fit import (calibration_request, fit_corrections,
                                                          least_squares_affine_streams)
from ditcache.compiler.calibration.correction_train import train_corrections
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import get_spec, load_model, parse_schedule, parts_for
from ditcache.graphs.planning import plan_for
from ditcache.graphs.streams import Streams

from test_flow_sampling import prompts_for

STREAMS = Streams(("text", "image"), (5, 11))


def test_per_stream_least_squares_recovers_a_per_stream_affine_map():
    gen = torch.Generator().manual_seed(0)
    d = 6
    x = torch.randn(3, sum(STREAMS.tokens), d, generator=gen)  # (B, L + T, D)
    scale = torch.stack([torch.linspace(-1, 2, d), torch.linspace(0.5, 1.5, d)])  # (2, D): text row, image row
    shift = torch.stack([torch.full((d,), 3.0), torch.linspace(-2, 0, d)])
    y = x * STREAMS.expand(scale) + STREAMS.expand(shift)
    got_scale, got_shift = least_squares_affine_streams(x, y, STREAMS)
    assert got_scale.shape == got_shift.shape == (2, d)
    torch.testing.assert_close(got_scale, scale, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_shift, shift, rtol=1e-5, atol=1e-5)
    shared_scale, shared_shift = least_squares_affine_streams(x, y, STREAMS, shared=True)
    torch.testing.assert_close(shared_scale[0], shared_scale[1], rtol=0, atol=0)  # one fit in both rows
    residual = (x * STREAMS.expand(shared_scale) + STREAMS.expand(shared_shift) - y).abs().max()
    assert residual > 0.1, "one per-channel map cannot fit two streams' maps"


def test_fit_corrections_on_sd3_writes_a_row_per_stream():
    """Ranges b0 (a joint block) and b2 (the last, context_pre_only block alone) under CFG: every replay step fitted
    per stream; b2's text row stays the identity (its recorded and true text offsets are both zero)."""
    spec = get_spec("sd3-tiny")
    model, _ = load_model(spec, random_weights=True, seed=0)
    parts = parts_for(model, spec)
    steps, last = 6, parts.num_blocks - 1
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "recompute": {0: [0, 3], last: [0, 2, 4]}}),
                    spec)
    request = calibration_request((), [0], steps, 4.0, spec.sampler, prompts_for(spec))
    tensors = fit_corrections(model, spec, plan, request)
    d = spec.hidden_size
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        f"{k}.b{i}": (steps, 2, d) for k in ("scale", "shift") for i in (0, last)}
    replays = {i: [s for s in range(steps) if f"b{i}" in plan.steps[s].replay] for i in (0, last)}
    for s in replays[last]:
        assert torch.equal(tensors[f"scale.b{last}"][s, 0], torch.ones(d))
        assert torch.equal(tensors[f"shift.b{last}"][s, 0], torch.zeros(d))
        assert not torch.equal(tensors[f"scale.b{last}"][s, 1], torch.ones(d))
    for s in replays[0]:  # two rows fitted apart
        assert (tensors["scale.b0"][s, 0] - tensors["scale.b0"][s, 1]).abs().max() > 1e-3
    shared = fit_corrections(model, spec, plan, request, shared_streams=True)
    torch.testing.assert_close(shared["scale.b0"][:, 0], shared["scale.b0"][:, 1], rtol=0, atol=0)
    corrected = dataclasses.replace(plan, corrected=True)
    outs = [sample_with_plan(eager_dispatcher(model, spec, corrected, t), spec, request) for t in (tensors, shared)]
    assert (outs[0] - outs[1]).abs().max() > 1e-5


def test_trained_fit_keeps_the_per_stream_layout():
    spec = get_spec("sd3-tiny")
    model, _ = load_model(spec, random_weights=True, seed=0)
    steps = 4
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "recompute": {1: [0, 2]}}), spec)
    request = calibration_request((), [0], steps, 1.0, spec.sampler, prompts_for(spec))
    tensors, log = train_corrections(model, spec, plan, request, epochs=2, lr=2e-2)
    assert tensors["scale.b1"].shape == (steps, 2, spec.hidden_size) and len(log.epoch_losses) == 2
    assert torch.equal(tensors["scale.b1"][0], torch.ones(2, spec.hidden_size))  # step 0 computes: never trained
    assert not torch.equal(tensors["scale.b1"][1], torch.ones(2, spec.hidden_size))  # a replay step was trained
