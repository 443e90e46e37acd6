"""Every variant kind against the independent reference in reference.py."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.graphs import VariantModule, get_spec, parse_schedule
from ditcache.graphs.planning import plan_for
from ditcache.graphs.variants import variant_input_names

from reference import reference_step, skip_range

BATCH = 4


def step_inputs(parts, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [parts.example_inputs(BATCH, gen) for _ in range(steps)]


def run_plan(parts, plan, inputs, corrections=None):
    dispatcher = Dispatcher(plan, eager_variants(parts, plan), corrections)
    return [dispatcher(x) for x in inputs]


@pytest.mark.parametrize("cached_blocks", [2, 3])  # 3 of 4: front and back ranges overlap
def test_delta_dit_matches_reference(tiny_model, tiny_parts, cached_blocks):
    steps, boundary, interval, nb = 7, 3, 2, 4
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": steps, "boundary": boundary, "interval": interval,
                                    "cached_blocks": cached_blocks}), get_spec("dit-tiny"))
    inputs = step_inputs(tiny_parts, steps)
    got = run_plan(tiny_parts, plan, inputs)

    front, back = (0, cached_blocks), (nb - cached_blocks, nb)
    delta = {}
    kinds = []
    for s, x in enumerate(inputs):
        full = s % interval == 0 or s == boundary
        if full:
            out, cap = reference_step(tiny_model, x, {}, capture=[0, nb - cached_blocks, cached_blocks - 1, nb - 1])
            delta["front"] = cap[front[1] - 1][1] - cap[front[0]][0]
            delta["back"] = cap[back[1] - 1][1] - cap[back[0]][0]
            kinds.append("full")
        else:
            name, (a, b) = ("back", back) if s < boundary else ("front", front)
            out, _ = reference_step(tiny_model, x, skip_range(a, b, lambda h, d=delta[name]: h + d))
            full_out, _ = reference_step(tiny_model, x, {})
            assert (out - full_out).abs().max() > 1e-4, "a cached step that equals the full step proves nothing"
            kinds.append(f"{name}-skipped")
        torch.testing.assert_close(got[s], out, msg=f"step {s}")
    assert [v.name.split("+")[0] for v in plan.steps] == kinds


def block_reference(model, inputs, recompute, mode, scale=None, shift=None):
    """Block caching by hand: each block's residual (or output) kept from its last compute."""
    nb = len(model.transformer_blocks)
    cache, outs = {}, []
    for s, x in enumerate(inputs):
        replaced = {}
        for i, steps in recompute.items():
            if s not in steps:
                value = cache[i]
                if scale is not None:
                    value = value * scale[i][s] + shift[i][s]
                replaced[i] = (lambda h, v=value: h + v) if mode == "offset" else (lambda h, v=value: v)
        out, cap = reference_step(model, x, replaced, capture=[i for i in range(nb) if i not in replaced])
        for i in recompute:
            if i not in replaced:
                h_in, h_out = cap[i]
                cache[i] = h_out - h_in if mode == "offset" else h_out
        outs.append(out)
    return outs


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_block_replay_matches_reference(tiny_model, tiny_parts, mode):
    recompute = {0: [0, 3], 1: [0, 2, 4], 3: [0]}
    steps = 5
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "cache": mode,
                                    "recompute": recompute}), get_spec("dit-tiny"))
    inputs = step_inputs(tiny_parts, steps, seed=1)
    got = run_plan(tiny_parts, plan, inputs)
    want = block_reference(tiny_model, inputs, recompute, mode)
    full = [reference_step(tiny_model, x, {})[0] for x in inputs]
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if s > 0:
            assert (got[s] - full[s]).abs().max() > 1e-4


def test_block_replay_scale_shift_matches_reference(tiny_model, tiny_parts, tmp_path):
    from safetensors.torch import save_file

    recompute = {1: [0, 3], 2: [0]}
    steps, d = 4, tiny_parts.channel_shape()[0]
    gen = torch.Generator().manual_seed(2)
    scale = {i: 1 + 0.1 * torch.randn(steps, d, generator=gen) for i in recompute}
    shift = {i: 0.1 * torch.randn(steps, d, generator=gen) for i in recompute}
    tensors = {f"scale.b{i}": scale[i] for i in recompute} | {f"shift.b{i}": shift[i] for i in recompute}
    save_file(tensors, tmp_path / "ss.safetensors")
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "recompute": recompute,
                                    "scale_shift": "ss.safetensors"}, base_dir=tmp_path), get_spec("dit-tiny"))
    assert plan.corrected
    inputs = step_inputs(tiny_parts, steps, seed=3)
    got = run_plan(tiny_parts, plan, inputs, corrections=tensors)
    want = block_reference(tiny_model, inputs, recompute, "offset", scale, shift)
    plain = block_reference(tiny_model, inputs, recompute, "offset")
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
    assert (got[1] - plain[1]).abs().max() > 1e-4, "the correction must change replayed steps"


def test_variant_module_flat_signature_matches_dispatcher(tiny_parts):
    """The flat module that compilers trace computes what the host-chained variant computes."""
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2,
                                    "cached_blocks": 2}), get_spec("dit-tiny"))
    inputs = step_inputs(tiny_parts, 4, seed=4)
    dispatcher = Dispatcher(plan, eager_variants(tiny_parts, plan))
    caches = {}
    for s, x in enumerate(inputs):
        variant = plan.steps[s]
        module = VariantModule(tiny_parts, plan, variant)
        assert module.input_names == variant_input_names(tiny_parts, plan, variant)
        args = [x[k] for k in tiny_parts.input_names] + [caches[n] for n in variant.replay]
        with torch.no_grad():
            outs = module(*args)
        assert len(outs) == len(module.output_names) == 1 + len(variant.record)
        caches.update(zip(variant.record, outs[1:]))
        torch.testing.assert_close(outs[0], dispatcher(x), rtol=0, atol=0)
