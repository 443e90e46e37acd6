"""FLUX.1: head / blocks[i:j] / tail chained equals diffusers' FluxTransformer2DModel.forward bit for bit; the
[text; image] hidden state under Δ-DiT and block caching against diffusers' own forward with blocks swapped; the
registry sizes; the analytic MACs against torch's FlopCounterMode."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.graphs import costs_for, get_spec, parse_schedule, parts_for
from ditcache.graphs.flow_spec import pack_latents, unpack_latents
from ditcache.graphs.flux import FluxParts, token_positions
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import spec_for_config
from ditcache.graphs.weights import build_model, load_model

from stream_reference import FLUX, block_cache_reference, chained, counted_macs, delta_dit_reference, reference_step

TINY = ("flux-tiny", "flux-schnell-tiny")  # with / without FLUX.1-dev's guidance embedding


def diffusers_forward(model, spec, inputs):
    """The model as FluxPipeline calls it: its own txt_ids / img_ids."""
    from diffusers import FluxPipeline

    _, height, width = spec.latent_shape
    img_ids = FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, inputs["x"].device, torch.float32)
    txt_ids = torch.zeros(spec.text_length, 3)
    return model(hidden_states=inputs["x"], timestep=inputs["timestep"], guidance=inputs.get("guidance"),
                 pooled_projections=inputs["pooled_projections"], encoder_hidden_states=inputs["encoder_hidden_states"],
                 txt_ids=txt_ids, img_ids=img_ids).sample


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    spec = get_spec(request.param)
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, parts_for(model, spec)


def test_chained_equals_diffusers_forward(tiny):
    """Cuts inside the dual-stream blocks, inside the single-stream ones, and across the boundary (2 + 2 blocks)."""
    spec, model, parts = tiny
    assert parts.num_blocks == 4 and parts.num_dual == 2 and parts.block_labels()[1:3] == ["dual.1", "single.0"]
    inputs = parts.example_inputs(3, torch.Generator().manual_seed(0))
    assert ("guidance" in inputs) == (spec.name == "flux-tiny")
    with torch.no_grad():
        want = diffusers_forward(model, spec, inputs)
        for cuts in [(0, 4), (0, 1, 2, 3, 4), (0, 3, 4), (0, 1, 4), (0, 2, 4)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0, msg=str(cuts))
    assert want.shape == (3, parts.image_tokens, spec.in_channels)


def test_hidden_state_is_text_then_image(tiny):
    """h = [text; image]: the head's text rows are the projected prompt, its image rows the embedded latents."""
    spec, model, parts = tiny
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        h, temb, cos, sin = parts.head()(*(inputs[n] for n in parts.input_names))
        text = model.context_embedder(inputs["encoder_hidden_states"])
        image = model.x_embedder(inputs["x"])
    assert h.shape == parts.hidden_shape(2) == (2, spec.text_length + parts.image_tokens, spec.hidden_size)
    torch.testing.assert_close(h[:, :spec.text_length], text, rtol=0, atol=0)
    torch.testing.assert_close(h[:, spec.text_length:], image, rtol=0, atol=0)
    assert cos.shape == sin.shape == (parts.tokens, spec.config["attention_head_dim"])
    assert parts.channel_shape() == (spec.hidden_size,)
    out = (torch.randn(2, spec.text_length, spec.hidden_size), torch.randn(2, parts.image_tokens, spec.hidden_size))
    torch.testing.assert_close(FluxParts.block_output(out), torch.cat(out, dim=1))


def test_packing_and_positions_match_the_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(2))
    packed = pack_latents(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpack_latents(packed, 6, 8), latents, rtol=0, atol=0)
    positions = token_positions(5, 6, 8)
    torch.testing.assert_close(positions[:5], torch.zeros(5, 3), rtol=0, atol=0)
    torch.testing.assert_close(positions[5:], FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32),
                               rtol=0, atol=0)


def test_mismatched_spec_and_bad_range(tiny):
    spec, model, parts = tiny
    with pytest.raises(ValueError, match="outside"):
        parts.blocks(2, 9)
    other = get_spec("flux-schnell-tiny" if spec.name == "flux-tiny" else "flux-tiny")
    with pytest.raises(ValueError, match="guidance_embeds"):
        FluxParts(model, other)


@pytest.mark.parametrize("name, guidance, text", [("flux-dev", True, 512), ("flux-schnell", False, 256)])
def test_registry_sizes_build_in_diffusers(name, guidance, text):
    """The FLUX.1 configs are valid FluxTransformer2DModel kwargs (built on the meta device: no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        parts = parts_for(model, spec)
    assert parts.num_blocks == spec.num_blocks == 57 and parts.num_dual == 19 and spec.hidden_size == 3072
    assert model.config.guidance_embeds == guidance and spec.text_length == text
    assert parts.hidden_shape(1) == (1, text + 4096, 3072)  # 1024x1024: 64x64 packed tokens
    params = sum(p.numel() for p in model.parameters())
    assert 11.8e9 < params < 12.0e9  # FLUX.1: ~11.9B
    assert spec_for_config(model.config) is spec
    assert spec.sampler == "flow-euler" and spec.flow.timestep_divisor == 1000 and spec.flow.packed


def test_spec_for_config_of_a_custom_flux(tiny):
    spec, model, _ = tiny
    custom = spec_for_config(dict(model.config, num_single_layers=3))
    assert custom.name == "custom" and custom.family == "flux" and custom.num_blocks == 5


# ---- caching: the [text; image] hidden state against diffusers' forward with blocks swapped -----------------
def step_calls(spec, parts, model, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = [parts.example_inputs(2, gen) for _ in range(steps)]
    return inputs, [lambda m, x=x: diffusers_forward(m, spec, x) for x in inputs]


@pytest.mark.parametrize("cached_blocks", [1, 3])  # 3 of 2 + 2: each range spans dual- and single-stream blocks
def test_delta_dit_matches_reference(tiny, cached_blocks):
    spec, model, parts = tiny
    steps, boundary, interval = 6, 3, 2
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": steps, "boundary": boundary, "interval": interval,
                                    "cached_blocks": cached_blocks}), spec)
    inputs, calls = step_calls(spec, parts, model, steps, seed=3)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, full = delta_dit_reference(model, FLUX, calls, parts.num_blocks, boundary, interval, cached_blocks)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
    cached = [s for s in range(steps) if plan.steps[s].replay]
    assert cached, "the plan must replay something"
    for s in cached:
        assert (got[s] - full[s]).abs().max() > 1e-4, f"step {s}: a cached step equal to the full one proves nothing"


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_block_cache_matches_reference(tiny, mode):
    """Per-block caching of dual-stream (0, 1) and single-stream (3) blocks; the cache covers both streams."""
    spec, model, parts = tiny
    recompute = {0: [0, 3], 1: [0, 2], 3: [0]}
    steps = 4
    schedule = {"kind": "block-cache", "steps": steps, "cache": mode, "recompute": recompute}
    plan = plan_for(parse_schedule(schedule), spec)
    inputs, calls = step_calls(spec, parts, model, steps, seed=4)
    dispatcher = build_dispatcher(plan, parts=parts)
    got = [dispatcher(x) for x in inputs]
    want, kept = block_cache_reference(model, FLUX, calls, parts.num_blocks, recompute, mode)
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if s > 0:
            full, _ = reference_step(model, FLUX, calls[s], {})
            assert (got[s] - full).abs().max() > 1e-4
    text = spec.text_length
    for i in recompute:  # the kept value has text and image rows, and both move
        value = kept[0][i]
        assert value.shape == parts.hidden_shape(2)
        assert value[:, :text].abs().max() > 1e-4 and value[:, text:].abs().max() > 1e-4


def test_block_cache_scale_shift_matches_reference(tiny, tmp_path):
    """The per-channel scale/shift (D,) of a replayed block, shared by its text and image tokens."""
    from safetensors.torch import save_file

    spec, model, parts = tiny
    recompute, steps, d = {1: [0, 2], 2: [0]}, 3, parts.channel_shape()[0]
    gen = torch.Generator().manual_seed(5)
    scale = {i: 1 + 0.1 * torch.randn(steps, d, generator=gen) for i in recompute}
    shift = {i: 0.1 * torch.randn(steps, d, generator=gen) for i in recompute}
    tensors = {f"scale.b{i}": scale[i] for i in recompute} | {f"shift.b{i}": shift[i] for i in recompute}
    save_file(tensors, tmp_path / "ss.safetensors")
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "recompute": recompute,
                                    "scale_shift": "ss.safetensors"}, base_dir=tmp_path), spec)
    assert plan.corrected
    inputs, calls = step_calls(spec, parts, model, steps, seed=6)
    dispatcher = build_dispatcher(plan, parts=parts, corrections=tensors)
    got = [dispatcher(x) for x in inputs]
    want, _ = block_cache_reference(model, FLUX, calls, parts.num_blocks, recompute, "offset", scale, shift)
    plain, _ = block_cache_reference(model, FLUX, calls, parts.num_blocks, recompute, "offset")
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
    assert (got[1] - plain[1]).abs().max() > 1e-4, "the correction must change replayed steps"


# ---- MACs ---------------------------------------------------------------------------------------------------
def check_macs(spec, model, parts, batch, blocks):
    costs = costs_for(spec, batch)
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(0))
    head = parts.head()
    macs, outs = counted_macs(head, *(inputs[n] for n in head.inputs))
    assert macs == costs.head
    env = dict(zip(head.outputs, outs))
    for i in blocks:
        seg = parts.blocks(i, i + 1)
        macs, _ = counted_macs(seg, *(env[n] for n in seg.inputs))
        assert macs == costs.blocks[i], f"block {i}"
    tail = parts.tail()
    macs, _ = counted_macs(tail, *(env[n] for n in tail.inputs))
    assert macs == costs.tail
    macs, _ = counted_macs(diffusers_forward, model, spec, inputs)
    assert macs == costs.full


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_match_flop_counter(tiny, batch):
    spec, model, parts = tiny
    check_macs(spec, model, parts, batch, range(parts.num_blocks))


@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell"])
def test_macs_match_flop_counter_at_full_size(name):
    """FLUX.1 at 1024x1024 with 512 / 256 text tokens, on the meta device (shapes only: no memory, no compute)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
        parts = parts_for(model, spec)
        check_macs(spec, model, parts, 1, (0, parts.num_dual - 1, parts.num_dual, parts.num_blocks - 1))


def test_macs_hand_count_flux_dev():
    """FLUX.1-dev, one 1024x1024 image: T = 4096 image + L = 512 text tokens, D = 3072."""
    d, n = 3072, 4096 + 512
    dual = 12 * d * d + 12 * n * d * d + 2 * n * n * d
    single = 3 * d * d + 12 * n * d * d + 2 * n * n * d
    costs = costs_for(get_spec("flux-dev"))
    assert costs.blocks[0] == dual and costs.blocks[-1] == single
    assert costs.head == 4096 * 64 * d + 2 * (256 * d + d * d) + 768 * d + d * d + 512 * 4096 * d
    assert costs.tail == 2 * d * d + 4096 * d * 64
    assert costs.full == costs.head + 19 * dual + 38 * single + costs.tail


def test_weights_from_a_diffusers_folder_and_original_refused(tmp_path):
    """save_pretrained's folder loads back (its config.json, with _class_name, names this family); an original
    BFL checkpoint is refused with the conversion to run."""
    import json

    from safetensors.torch import save_file

    from ditcache.graphs.weights import WeightsError

    spec = get_spec("flux-tiny")
    model, _ = load_model(spec, random_weights=True, seed=2)
    model.save_pretrained(tmp_path / "transformer")
    loaded, info = load_model(spec, tmp_path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    assert config["_class_name"] == "FluxTransformer2DModel" and spec_for_config(config) is spec
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(tmp_path / "flux1-dev.safetensors"))
    with pytest.raises(WeightsError, match="from_single_file"):
        load_model(spec, tmp_path / "flux1-dev.safetensors")


@pytest.mark.slow
def test_full_width_reduced_depth_chain_equals_diffusers():
    """FLUX.1's width (3072, 24 heads, T5/CLIP widths) with 1 dual + 1 single block, 16x16 latents, 16 text tokens
    (its 12B parameters do not fit the CPU): chained equals the forward bit for bit."""
    from ditcache.graphs.flux import flux_config, flux_spec

    spec = flux_spec("flux-dev-1+1", flux_config(True, layers=1, single_layers=1), "FLUX.1-dev width, 2 blocks",
                     (16, 16, 16), 16)
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    inputs = parts.example_inputs(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, spec, inputs)
        for cuts in [(0, 2), (0, 1, 2)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
