"""SD3 / 3.5: head / blocks[i:j] / tail chained equals diffusers' SD3Transformer2DModel.forward bit for bit; the
[text; image] hidden state under Δ-DiT and block caching against diffusers' own forward with blocks swapped (the
context_pre_only last block carries the text through); the registry sizes; the analytic MACs."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.graphs import costs_for, get_spec, parse_schedule, parts_for
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import spec_for_config
from ditcache.graphs.sd3 import SD3Parts
from ditcache.graphs.weights import build_model, load_model

from stream_reference import SD3, block_cache_reference, chained, counted_macs, delta_dit_reference, reference_step


def diffusers_forward(model, inputs):
    return model(hidden_states=inputs["x"], timestep=inputs["timestep"],
                 encoder_hidden_states=inputs["encoder_hidden_states"],
                 pooled_projections=inputs["pooled_projections"]).sample


@pytest.fixture(scope="module")
def tiny():
    """3 joint blocks: block 0 with SD3.5's second self-attention, QK norm, the last one context_pre_only."""
    spec = get_spec("sd3-tiny")
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, parts_for(model, spec)


def test_tiny_covers_the_block_variants(tiny):
    _, model, _ = tiny
    blocks = model.transformer_blocks
    assert blocks[0].use_dual_attention and not blocks[1].use_dual_attention
    assert [b.context_pre_only for b in blocks] == [False, False, True]
    assert blocks[1].attn.norm_q is not None  # qk_norm rms_norm (SD3.5)


def test_chained_equals_diffusers_forward(tiny):
    spec, model, parts = tiny
    inputs = parts.example_inputs(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, 3), (0, 1, 2, 3), (0, 2, 3), (0, 1, 3)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0, msg=str(cuts))
    assert want.shape == (3, *spec.latent_shape)


def test_last_block_carries_the_text_through(tiny):
    """The context_pre_only block returns no text stream: its segment passes the text rows on unchanged."""
    spec, _, parts = tiny
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(1))
    text = spec.text_length
    with torch.no_grad():
        h, temb = parts.head()(*(inputs[n] for n in parts.input_names))
        h = parts.blocks(0, 2)(h, temb)
        out = parts.blocks(2, 3)(h, temb)
    assert out.shape == h.shape == parts.hidden_shape(2)
    torch.testing.assert_close(out[:, :text], h[:, :text], rtol=0, atol=0)
    assert (out[:, text:] - h[:, text:]).abs().max() > 1e-4
    image = torch.randn(2, parts.image_tokens, spec.hidden_size)
    torch.testing.assert_close(parts.block_output((None, image), h[:, :text]), torch.cat([h[:, :text], image], 1))


def test_bad_range_and_mismatched_model(tiny):
    spec, model, parts = tiny
    with pytest.raises(ValueError, match="outside"):
        parts.blocks(1, 7)
    wider = build_model(spec_for_config(dict(model.config, caption_projection_dim=48)))
    with pytest.raises(ValueError, match="caption_projection_dim 48"):
        SD3Parts(wider, spec)


@pytest.mark.parametrize("name, blocks, width, params", [("sd3-medium", 24, 1536, (2.0e9, 2.1e9)),
                                                         ("sd35-large", 38, 2432, (8.0e9, 8.2e9))])
def test_registry_sizes_build_in_diffusers(name, blocks, width, params):
    """The SD3 Medium and 3.5 Large configs are valid SD3Transformer2DModel kwargs (meta device: no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        parts = parts_for(model, spec)
    assert parts.num_blocks == spec.num_blocks == blocks and spec.hidden_size == width
    assert parts.hidden_shape(1) == (1, 333 + 4096, width)  # 77 + 256 text tokens, 64x64 patches of 1024x1024
    count = sum(p.numel() for p in model.parameters())
    assert params[0] < count < params[1], count
    assert spec_for_config(model.config) is spec
    assert spec.sampler == "flow-euler" and spec.flow.guidance == "cfg" and spec.scheduler_config["shift"] == 3.0


# ---- caching --------------------------------------------------------------------------------------------------
def step_calls(parts, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = [parts.example_inputs(2, gen) for _ in range(steps)]
    return inputs, [lambda m, x=x: diffusers_forward(m, x) for x in inputs]


@pytest.mark.parametrize("cached_blocks", [1, 2])  # back range = the context_pre_only block, or ends there
def test_delta_dit_matches_reference(tiny, cached_blocks):
    spec, model, parts = tiny
    steps, boundary, interval = 6, 3, 2
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": steps, "boundary": boundary, "interval": interval,
                                    "cached_blocks": cached_blocks}), spec)
    inputs, calls = step_calls(parts, steps, seed=3)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, full = delta_dit_reference(model, SD3, calls, parts.num_blocks, boundary, interval, cached_blocks)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if plan.steps[s].replay:
            assert (got[s] - full[s]).abs().max() > 1e-4, f"step {s}"


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_block_cache_matches_reference(tiny, mode):
    spec, model, parts = tiny
    recompute = {0: [0, 2], 2: [0, 3]}
    steps = 4
    schedule = {"kind": "block-cache", "steps": steps, "cache": mode, "recompute": recompute}
    plan = plan_for(parse_schedule(schedule), spec)
    inputs, calls = step_calls(parts, steps, seed=4)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, kept = block_cache_reference(model, SD3, calls, parts.num_blocks, recompute, mode)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if s in (1, 2):
            full, _ = reference_step(model, SD3, calls[s], {})
            assert (got[s] - full).abs().max() > 1e-4
    if mode == "offset":  # the last block's offset: zero on the text rows it carries, nonzero on the image
        last = kept[0][2]
        assert last[:, :spec.text_length].abs().max() == 0 and last[:, spec.text_length:].abs().max() > 1e-4
        assert kept[0][0][:, :spec.text_length].abs().max() > 1e-4


# ---- MACs ---------------------------------------------------------------------------------------------------
def check_macs(spec, model, parts, batch):
    costs = costs_for(spec, batch)
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(0))
    macs, (h, temb) = counted_macs(parts.head(), *(inputs[n] for n in parts.input_names))
    assert macs == costs.head
    for i in sorted({0, 1, parts.num_blocks - 1}):
        macs, _ = counted_macs(parts.blocks(i, i + 1), h, temb)
        assert macs == costs.blocks[i], f"block {i}"
    macs, _ = counted_macs(parts.tail(), h, temb)
    assert macs == costs.tail
    macs, _ = counted_macs(diffusers_forward, model, inputs)
    assert macs == costs.full


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_match_flop_counter(tiny, batch):
    spec, model, parts = tiny
    check_macs(spec, model, parts, batch)


@pytest.mark.parametrize("name", ["sd3-medium", "sd35-large"])
def test_macs_match_flop_counter_at_full_size(name):
    """1024x1024 with 333 text tokens, on the meta device (shapes only)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        check_macs(spec, model, parts_for(model, spec), 2)


def test_macs_hand_count_sd3_medium():
    """SD3 Medium, one 1024x1024 image: T = 4096, L = 333, D = 1536; the last block has no text outputs."""
    d, t, length = 1536, 4096, 333
    n = t + length
    joint = 12 * d * d + 12 * n * d * d + 2 * n * n * d
    last = 8 * d * d + 3 * n * d * d + 9 * t * d * d + 2 * n * n * d
    costs = costs_for(get_spec("sd3-medium"))
    assert costs.blocks[0] == joint and costs.blocks[-1] == last
    assert costs.full == costs.head + 23 * joint + last + costs.tail


def test_weights_from_a_diffusers_folder(tmp_path):
    import json

    spec = get_spec("sd3-tiny")
    model, _ = load_model(spec, random_weights=True, seed=2)
    model.save_pretrained(tmp_path / "transformer")
    loaded, _ = load_model(spec, tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "SD3Transformer2DModel" and spec_for_config(config) is spec


@pytest.mark.slow
def test_full_width_reduced_depth_chain_equals_diffusers():
    """SD3 Medium's width (1536, 24 heads) with 2 joint blocks (the second context_pre_only), 16x16 latents."""
    from ditcache.graphs.sd3 import sd3_config, sd3_spec

    spec = sd3_spec("sd3-medium-2", sd3_config(2, 24), "SD3 Medium width, 2 blocks", (16, 16, 16), text_length=16)
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, 2), (0, 1, 2)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
