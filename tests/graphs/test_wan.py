"""Wan 2.1 text-to-video: head / blocks[i:j] / tail chained equals diffusers' WanTransformer3DModel.forward bit for
bit; Δ-DiT and block caching against diffusers' own forward with blocks swapped; the registry sizes (built from
configs: WanTransformer3DModel.from_pretrained needs accelerate); the analytic MACs."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.graphs import costs_for, get_spec, parse_schedule, parts_for
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import spec_for_config
from ditcache.graphs.wan import WanParts
from ditcache.graphs.weights import build_model, load_model

from stream_reference import WAN, block_cache_reference, chained, counted_macs, delta_dit_reference, reference_step


def diffusers_forward(model, inputs):
    return model(hidden_states=inputs["x"], timestep=inputs["timestep"],
                 encoder_hidden_states=inputs["encoder_hidden_states"]).sample


@pytest.fixture(scope="module")
def tiny():
    spec = get_spec("wan-tiny")
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, parts_for(model, spec)


def test_chained_equals_diffusers_forward(tiny):
    spec, model, parts = tiny
    inputs = parts.example_inputs(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, 3), (0, 1, 2, 3), (0, 2, 3), (0, 1, 3)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0, msg=str(cuts))
        # the pipeline hands the model integer timesteps; ditcache's float32 copies of them embed the same
        as_int = dict(inputs, timestep=inputs["timestep"].long())
        torch.testing.assert_close(diffusers_forward(model, as_int), want, rtol=0, atol=0)
    assert want.shape == (3, *spec.latent_shape)
    assert parts.hidden_shape(3) == (3, 3 * 4 * 4, spec.hidden_size)


def test_image_to_video_and_bad_range_are_refused(tiny):
    spec, model, parts = tiny
    with pytest.raises(ValueError, match="outside"):
        parts.blocks(0, 4)
    i2v = build_model(spec_for_config(dict(model.config, image_dim=16, added_kv_proj_dim=32)))
    with pytest.raises(ValueError, match="image-to-video"):
        WanParts(i2v, spec)


@pytest.mark.parametrize("name, blocks, width, params", [("wan21-t2v-1.3b", 30, 1536, (1.3e9, 1.5e9)),
                                                         ("wan21-t2v-14b", 40, 5120, (13.5e9, 14.5e9))])
def test_registry_sizes_build_in_diffusers(name, blocks, width, params):
    """The Wan 2.1 T2V configs are valid WanTransformer3DModel kwargs (meta device: no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        parts = parts_for(model, spec)
    assert parts.num_blocks == spec.num_blocks == blocks and spec.hidden_size == width
    assert parts.hidden_shape(1) == (1, 21 * 30 * 52, width)  # 81 frames of 480x832
    count = sum(p.numel() for p in model.parameters())
    assert params[0] < count < params[1], count
    assert spec_for_config(model.config) is spec
    assert spec.sampler == "flow-unipc" and spec.scheduler_config["flow_shift"] == 3.0
    assert spec.scheduler_config["prediction_type"] == "flow_prediction"


def step_calls(parts, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = [parts.example_inputs(2, gen) for _ in range(steps)]
    return inputs, [lambda m, x=x: diffusers_forward(m, x) for x in inputs]


def test_delta_dit_matches_reference(tiny):
    spec, model, parts = tiny
    steps, boundary, interval, cached_blocks = 6, 3, 2, 2
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": steps, "boundary": boundary, "interval": interval,
                                    "cached_blocks": cached_blocks}), spec)
    inputs, calls = step_calls(parts, steps, seed=3)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, full = delta_dit_reference(model, WAN, calls, parts.num_blocks, boundary, interval, cached_blocks)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if plan.steps[s].replay:
            assert (got[s] - full[s]).abs().max() > 1e-4, f"step {s}"


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_block_cache_matches_reference(tiny, mode):
    spec, model, parts = tiny
    recompute = {0: [0, 2], 2: [0]}
    steps = 3
    schedule = {"kind": "block-cache", "steps": steps, "cache": mode, "recompute": recompute}
    plan = plan_for(parse_schedule(schedule), spec)
    inputs, calls = step_calls(parts, steps, seed=4)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, _ = block_cache_reference(model, WAN, calls, parts.num_blocks, recompute, mode)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if s > 0:
            full, _ = reference_step(model, WAN, calls[s], {})
            assert (got[s] - full).abs().max() > 1e-4


def check_macs(spec, model, parts, batch):
    costs = costs_for(spec, batch)
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(0))
    head = parts.head()
    macs, outs = counted_macs(head, *(inputs[n] for n in head.inputs))
    assert macs == costs.head
    env = dict(zip(head.outputs, outs))
    seg = parts.blocks(0, 1)
    macs, _ = counted_macs(seg, *(env[n] for n in seg.inputs))
    assert macs == costs.blocks[0]
    macs, _ = counted_macs(parts.tail(), env["h"], env["temb"])
    assert macs == costs.tail
    macs, _ = counted_macs(diffusers_forward, model, inputs)
    assert macs == costs.full


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_match_flop_counter(tiny, batch):
    spec, model, parts = tiny
    check_macs(spec, model, parts, batch)


@pytest.mark.parametrize("name", ["wan21-t2v-1.3b", "wan21-t2v-14b"])
def test_macs_match_flop_counter_at_full_size(name):
    """81 frames of 480x832 (32,760 video tokens) with 512 text tokens, on the meta device (shapes only)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        check_macs(spec, model, parts_for(model, spec), 1)


def test_macs_hand_count_wan_1_3b():
    """Wan 2.1 1.3B, one 81-frame 480x832 video: T = 21 * 30 * 52, L = 512, D = 1536, FFN 8960."""
    d, t, length, ffn = 1536, 21 * 30 * 52, 512, 8960
    block = 6 * t * d * d + 2 * length * d * d + 2 * t * t * d + 2 * t * length * d + 2 * t * d * ffn
    costs = costs_for(get_spec("wan21-t2v-1.3b"))
    assert costs.blocks[0] == block and costs.full == costs.head + 30 * block + costs.tail


def test_weights_from_a_diffusers_folder(tmp_path):
    """A save_pretrained folder loads back without from_pretrained (which needs accelerate for Wan); its
    config.json names this family."""
    import json

    spec = get_spec("wan-tiny")
    model, _ = load_model(spec, random_weights=True, seed=2)
    model.save_pretrained(tmp_path / "transformer")
    loaded, _ = load_model(spec, tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and spec_for_config(config) is spec


@pytest.mark.slow
def test_full_width_reduced_depth_chain_equals_diffusers():
    """Wan 2.1 1.3B's width (1536, 12 heads, FFN 8960) with 2 blocks, 2 latent frames of 16x16."""
    from ditcache.graphs.wan import wan_config, wan_spec

    spec = wan_spec("wan-1.3b-2", wan_config(2, 12, 8960), "Wan 1.3B width, 2 blocks", (16, 2, 16, 16),
                    text_length=16)
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, 2), (0, 1, 2)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
