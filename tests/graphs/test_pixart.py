"""PixArt-α: head / blocks[i:j] / tail chained equals diffusers' PixArtTransformer2DModel.forward; registry,
weights and the analytic MACs (against torch's FlopCounterMode on the real segments)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ditcache.graphs import PixArtParts, costs_for, get_spec, parse_schedule, parts_for
from ditcache.graphs.planning import plan_for
from ditcache.graphs.pixart import mask_to_bias
from ditcache.graphs.registry import MODELS, spec_for_config
from ditcache.graphs.weights import WeightsError, build_model, load_model

TINY = ("pixart-tiny", "pixart-tiny-ms")  # without / with the 1024-MS resolution and aspect-ratio conditions


def diffusers_forward(model, inputs):
    added = {k: inputs[k] for k in ("resolution", "aspect_ratio") if k in inputs} or None
    return model(inputs["x"], encoder_hidden_states=inputs["encoder_hidden_states"], timestep=inputs["timestep"],
                 encoder_attention_mask=inputs["encoder_attention_mask"], added_cond_kwargs=added).sample


def chained(parts: PixArtParts, inputs, cuts):
    head = parts.head()
    env = dict(inputs)
    env.update(zip(head.outputs, head(*(inputs[n] for n in head.inputs))))
    for a, b in zip(cuts[:-1], cuts[1:]):
        seg = parts.blocks(a, b)
        env["h"] = seg(*(env[n] for n in seg.inputs))
    tail = parts.tail()
    return tail(*(env[n] for n in tail.inputs))


@pytest.fixture(scope="module", params=TINY)
def tiny(request):
    spec = get_spec(request.param)
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, parts_for(model, spec)


def test_chained_equals_diffusers_forward(tiny):
    spec, model, parts = tiny
    inputs = parts.example_inputs(3, torch.Generator().manual_seed(0))
    mask = inputs["encoder_attention_mask"]
    assert (mask == 0).any() and (mask.sum(1) >= 1).all()  # some prompts are padded, none is empty
    assert ("resolution" in inputs) == (spec.name == "pixart-tiny-ms")
    nb = spec.num_blocks
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, nb), tuple(range(nb + 1)), (0, 1, nb)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
    assert want.shape == (3, spec.out_channels, spec.sample_size, spec.sample_size)


def test_padding_changes_the_output(tiny):
    """The mask reaches the cross-attention: padding a token changes the result, as in diffusers."""
    _, model, parts = tiny
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(1))
    inputs["encoder_attention_mask"] = torch.ones_like(inputs["encoder_attention_mask"])
    padded = dict(inputs, encoder_attention_mask=inputs["encoder_attention_mask"].clone())
    padded["encoder_attention_mask"][:, -3:] = 0
    with torch.no_grad():
        full, masked = chained(parts, inputs, (0, parts.num_blocks)), chained(parts, padded, (0, parts.num_blocks))
        torch.testing.assert_close(masked, diffusers_forward(model, padded), rtol=0, atol=0)
    assert (full - masked).abs().max() > 1e-4


def test_head_outputs_and_mask_bias(tiny):
    spec, _, parts = tiny
    inputs = parts.example_inputs(2, torch.Generator().manual_seed(2))
    with torch.no_grad():
        h, temb, embedded, context, bias = parts.head()(*(inputs[n] for n in parts.head().inputs))
    d, length = spec.hidden_size, spec.text_length
    assert h.shape == parts.hidden_shape(2) and temb.shape == (2, 6 * d) and embedded.shape == (2, d)
    assert context.shape == (2, length, d) and bias.shape == (2, 1, length)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(mask_to_bias(mask, torch.float32),
                               torch.tensor([[[0.0, 0.0, -10000.0]], [[0.0, -10000.0, -10000.0]]]))


def test_bad_range_and_mismatched_spec(tiny):
    spec, model, parts = tiny
    with pytest.raises(ValueError, match="outside"):
        parts.blocks(1, spec.num_blocks + 3)
    other = get_spec("pixart-tiny-ms" if spec.name == "pixart-tiny" else "pixart-tiny")
    with pytest.raises(ValueError, match="conditioning inputs"):
        PixArtParts(model, other)


@pytest.mark.parametrize("name", ["pixart-256", "pixart-512", "pixart-1024", "pixart-lcm-1024"])
def test_registry_sizes_build_in_diffusers(name):
    """The full-size configs are valid PixArtTransformer2DModel kwargs (built on the meta device: no memory)."""
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(spec)
    parts = parts_for(model, spec)
    assert parts.num_blocks == 28 and spec.hidden_size == 1152 and spec.text_length == 120
    assert model.use_additional_conditions == (spec.sample_size == 128)
    assert model.pos_embed.interpolation_scale == {32: 0.5, 64: 1, 128: 2}[spec.sample_size]
    params = sum(p.numel() for n, p in model.named_parameters())
    assert 600e6 < params < 620e6  # PixArt-α XL/2: ~0.6B
    assert spec_for_config(model.config).name == name.replace("lcm-", "")
    assert spec.sampler == ("lcm" if "lcm" in name else "dpm++")



@pytest.mark.slow
def test_full_size_chain_equals_diffusers_at_256px():
    """PixArt-α XL/2 256² (random weights): head / blocks / tail chained equal its forward bit for bit."""
    spec = get_spec("pixart-256")
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = parts_for(model, spec)
    inputs = parts.example_inputs(1, torch.Generator().manual_seed(0))
    nb = spec.num_blocks
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, nb), (0, nb // 4, nb - nb // 4, nb)]:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
    assert want.shape == (1, spec.out_channels, spec.sample_size, spec.sample_size)

def test_spec_for_config_of_a_custom_pixart(pixart_model, pixart_spec):
    assert spec_for_config(pixart_model.config) is pixart_spec
    config = dict(pixart_model.config, num_layers=3)
    custom = spec_for_config(config)
    assert custom.name == "custom" and custom.family == "pixart" and custom.num_blocks == 3


def test_weights_from_a_diffusers_folder(tmp_path, pixart_model, pixart_spec):
    pixart_model.save_pretrained(tmp_path / "transformer")
    model, info = load_model(pixart_spec, tmp_path)
    for (k, a), (_, b) in zip(pixart_model.state_dict().items(), model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert info.source.endswith("diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError, match="resolution_embedder.*missing"):
        load_model(get_spec("pixart-tiny-ms"), tmp_path)  # other architecture: first mismatching tensor named


# ---- MACs --------------------------------------------------------------------------------------------------
_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # see tests/graphs/test_macs.py


def counted_macs(fn, *args):
    mapping = {_CPU_SDPA: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as flops:
        out = fn(*args)
    return flops.get_total_flops() // 2, out


@pytest.mark.parametrize("batch", [1, 3])
def test_macs_match_flop_counter(tiny, batch):
    spec, model, parts = tiny
    costs = costs_for(spec, batch)
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(0))
    head = parts.head()
    macs, outs = counted_macs(head, *(inputs[n] for n in head.inputs))
    assert macs == costs.head
    env = dict(zip(head.outputs, outs))
    for i in (0, spec.num_blocks - 1):
        seg = parts.blocks(i, i + 1)
        macs, _ = counted_macs(seg, *(env[n] for n in seg.inputs))
        assert macs == costs.blocks[i], f"block {i}"
    tail = parts.tail()
    macs, _ = counted_macs(tail, *(env[n] for n in tail.inputs))
    assert macs == costs.tail
    macs, _ = counted_macs(diffusers_forward, model, inputs)
    assert macs == costs.full


def test_macs_hand_count_pixart_256():
    """PixArt-α 256 px, one image: T = 256 tokens, D = 1152, L = 120 caption tokens of 4096 channels."""
    t, d, length, c = 256, 1152, 120, 4096
    block = 14 * t * d * d + 2 * length * d * d + 2 * t * t * d + 2 * t * length * d
    head = t * 16 * d + 256 * d + d * d + 6 * d * d + length * (c * d + d * d)
    tail = t * d * 32
    costs = costs_for(get_spec("pixart-256"))
    assert costs.blocks[0] == block and costs.head == head and costs.tail == tail
    assert costs.full == head + 28 * block + tail
    ms = costs_for(get_spec("pixart-1024"))
    assert ms.head - costs_for(get_spec("pixart-512")).head - (4096 - 1024) * 16 * d == 3 * (256 * 384 + 384 * 384)


def test_delta_plans_reach_the_paper_speedups():
    for name, schedule, speedup in (("pixart-256", "schedules/pixart-delta-20.yaml", 1.6),
                                    ("pixart-lcm-1024", "schedules/pixart-lcm-delta-4.yaml", 1.12)):
        from ditcache.graphs import load_schedule

        spec = get_spec(name)
        plan = plan_for(load_schedule(schedule), spec)
        assert plan.theoretical_speedup(costs_for(spec)) == pytest.approx(speedup, abs=0.01), name


def test_every_registered_pixart_has_a_cost_model():
    for spec in MODELS.values():
        if spec.family == "pixart":
            plan = plan_for(parse_schedule({"kind": "full", "steps": 2}), spec)
            assert plan.total_macs(costs_for(spec)) == 2 * costs_for(spec).full > 0


def test_pixart_schedulers_match_the_reference_settings():
    """DPM-Solver++ and LCM timesteps/coefficients as PixArt's own scripts set them up.

    PixArt's conversion script saves ``DPMSolverMultistepScheduler()`` (diffusers defaults: linear betas
    1e-4..0.02); its LCM inference script uses ``LCMScheduler(beta_start=0.0001, beta_end=0.02, "linear",
    "epsilon")`` with 50 original (training) steps and c_skip/c_out at t/0.1, i.e. timestep_scaling 10.
    """
    from ditcache.compiler.runtime.sampling import make_scheduler

    lcm = make_scheduler("lcm", get_spec("pixart-lcm-1024").scheduler_config)
    assert (lcm.config.beta_start, lcm.config.beta_end, lcm.config.beta_schedule) == (1e-4, 0.02, "linear")
    assert lcm.config.prediction_type == "epsilon" and not lcm.config.clip_sample
    assert lcm.config.original_inference_steps == 50 and lcm.config.timestep_scaling == 10.0
    lcm.set_timesteps(4)
    # diffusers' spacing of the 50 LCM training steps (19, 39, ..., 999); PixArt's script takes every 12th
    # from the top ([999, 759, 519, 279]): the first two agree, the last two differ by 20 timesteps
    assert lcm.timesteps.tolist() == [999, 759, 499, 259]
    dpm = make_scheduler("dpm++", get_spec("pixart-256").scheduler_config)
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler"
    assert (dpm.config.beta_start, dpm.config.beta_end, dpm.config.beta_schedule) == (1e-4, 0.02, "linear")
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    dpm.set_timesteps(20)
    assert dpm.timesteps[0] == 999 and len(dpm.timesteps) == 20
