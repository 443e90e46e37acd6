"""U-Net decomposition (graphs/unet.py): chained segments equal diffusers' UNet2DConditionModel, skip features
are explicit segment inputs/outputs, and every kind of replay equals an independent reference (diffusers' own
forward with attention outputs replaced by hooks)."""

from __future__ import annotations

import json

import pytest
import torch

from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.graphs import PlanError, UNetParts, VariantModule, get_spec, parse_schedule
from ditcache.graphs.planning import plan_for
from ditcache.graphs.plan import CacheRange, Plan
from ditcache.graphs.registry import at_resolution
from ditcache.graphs.variants import build_segments
from ditcache.graphs.weights import load_model

BATCH = 3


@pytest.fixture(scope="module", params=["unet-tiny", "unet-fmnist"])
def unet(request):
    spec = get_spec(request.param)
    model, _ = load_model(spec, random_weights=True, seed=1)
    return spec, model, UNetParts(model, spec)


def diffusers_forward(model, inputs):
    return model(inputs["x"], inputs["timestep"], inputs.get("encoder_hidden_states"),
                 class_labels=inputs.get("class_labels")).sample


def chain(parts: UNetParts, inputs, cuts):
    """head, then per cut [a, b) the link before a (if any) and blocks [a, b), then tail."""
    env = dict(inputs)
    segments = [parts.head()]
    for a, b in zip(cuts[:-1], cuts[1:]):
        link = parts.link(a)
        segments += ([link] if link is not None else []) + [parts.blocks(a, b)]
    segments.append(parts.tail())
    for seg in segments:
        out = seg(*(env[n] for n in seg.inputs))
        env.update(zip(seg.outputs, out if isinstance(out, tuple) else (out,)))
    return env["out"]


def test_chained_segments_equal_the_diffusers_forward(unet):
    spec, model, parts = unet
    nb = parts.num_blocks
    inputs = parts.example_inputs(BATCH, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        for cuts in [(0, nb), tuple(range(nb + 1)), (0, 1, nb - 1, nb)]:
            torch.testing.assert_close(chain(parts, inputs, cuts), want, rtol=0, atol=0)
    assert want.shape == (BATCH, spec.out_channels, spec.sample_size, spec.sample_size)


def test_diffusers_levels_chain_to_the_diffusers_forward(unet):
    """The issue's cut: embedding + conv_in, each down block, mid, each up block, conv_out, skips explicit."""
    spec, model, parts = unet
    levels = parts.levels()
    config = model.config
    assert [s.name for s in levels] == ["embed", *(f"down.{i}" for i in range(len(config.down_block_types))), "mid",
                                        *(f"up.{i}" for i in range(len(config.up_block_types))), "out"]
    for segment, block in zip(levels[1:], model.down_blocks):  # a down block pushes one skip per resnet/sampler
        pushed = [n for n in segment.outputs if n.startswith("skip")]
        assert len(pushed) == len(block.resnets) + len(block.downsamplers or [])
    for segment, block in zip(levels[-1 - len(model.up_blocks):-1], model.up_blocks):  # an up block reads as many
        assert len([n for n in segment.inputs if n.startswith("skip")]) == len(block.resnets)
    inputs = parts.example_inputs(BATCH, torch.Generator().manual_seed(1))
    env = dict(inputs)
    with torch.no_grad():
        for seg in levels:
            out = seg(*(env[n] for n in seg.inputs))
            env.update(zip(seg.outputs, out if isinstance(out, tuple) else (out,)))
        torch.testing.assert_close(env["out"], diffusers_forward(model, inputs), rtol=0, atol=0)
    labels = parts.block_labels()
    assert len(labels) == parts.num_blocks and all(label.split()[0] in {s.name for s in levels} for label in labels)


def test_skip_features_are_explicit_values(unet):
    spec, _, parts = unet
    head = parts.head()
    assert head.inputs[:2] == ("x", "timestep") and head.outputs[:3] == ("h", "emb", "skip0")
    links = [parts.link(i) for i in range(1, parts.num_blocks) if parts.link(i) is not None]
    pushed = {n for link in links for n in link.outputs} | set(head.outputs)
    read = {n for link in links for n in link.inputs} | set(parts.tail().inputs)
    skips = {n for n in pushed if n.startswith("skip")}
    assert skips and skips == {n for n in read if n.startswith("skip")}  # every skip pushed is read once later
    for i in range(parts.num_blocks):  # an attention layer reads the hidden state (and the text), writes it
        assert parts.blocks(i, i + 1).outputs == ("h",)
        assert parts.blocks(i, i + 1).inputs == (("h", "encoder_hidden_states") if spec.text_conditioned else ("h",))
        assert parts.channel_shape(i) == (parts.hidden_shape(1, i)[1], 1, 1)
    assert parts.tail().outputs == ("out",)


def test_sd15_layout_and_unsupported_inputs():
    spec = get_spec("sd15-unet")
    assert spec.num_blocks == 16 and spec.text_length == 77 and spec.config["cross_attention_dim"] == 768
    with pytest.raises(ValueError, match="multiple of 64"):
        at_resolution(spec, 260)
    assert at_resolution(spec, 256).sample_size == 32


@pytest.fixture(scope="module")
def tiny():
    spec = get_spec("unet-tiny")
    model, _ = load_model(spec, random_weights=True, seed=2)
    return spec, model, UNetParts(model, spec)


def test_ranges_that_cannot_be_replayed_are_refused(tiny):
    spec, _, parts = tiny  # blocks: 0 down (8x8), 1 mid (4x4), 2-3 up (8x8)
    with pytest.raises(PlanError, match="also produces skip"):  # a down-path range feeds the skip connections
        build_segments(parts, Plan.from_replays(4, [CacheRange("r", 0, 2)], [set(), {"r"}]))
    with pytest.raises(PlanError, match="changes the feature shape"):  # mid (4x4) to up (8x8): no offset
        build_segments(parts, Plan.from_replays(4, [CacheRange("r", 1, 3)], [set(), {"r"}]))
    build_segments(parts, Plan.from_replays(4, [CacheRange("r", 1, 3)], [set(), {"r"}], cache="output"))
    build_segments(parts, Plan.from_replays(4, [CacheRange("r", 2, 4)], [set(), {"r"}]))  # one up level: fine
    with pytest.raises(PlanError, match="also produces skip"):  # Δ-DiT's front range on a U-Net
        delta = parse_schedule({"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2, "cached_blocks": 2})
        build_segments(parts, plan_for(delta, get_spec("unet-tiny")))


# ---- replays against diffusers' own forward ---------------------------------------------------
def reference_step(model, parts, inputs, replace):
    """diffusers' forward where attention layer i's output is ``replace[i](h_in, h_out)``; returns the output and
    every layer's (input, output) as the model computed them."""
    seen, handles = {}, []
    for i, module in enumerate(parts.block_modules()):
        def hook(mod, args, kwargs, output, i=i):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            seen[i] = (h_in, h_out)
            if i in replace:
                new = replace[i](h_in, h_out)
                return (new,) if isinstance(output, tuple) else new
            return None
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            out = diffusers_forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def block_reference(model, parts, inputs, recompute, mode, scale=None, shift=None):
    """Block caching by hand: each attention layer's residual (or output) kept from its last compute."""
    cache, outs = {}, []
    for s, x in enumerate(inputs):
        replace = {}
        for i, steps in recompute.items():
            if s not in steps:
                value = cache[i]
                if scale is not None:
                    value = value * scale[i][s] + shift[i][s]  # (B, C, H, W) * (C, 1, 1) + (C, 1, 1)
                replace[i] = (lambda h, _o, v=value: h + v) if mode == "offset" else (lambda _h, _o, v=value: v)
        out, seen = reference_step(model, parts, x, replace)
        for i in recompute:
            if i not in replace:
                h_in, h_out = seen[i]
                cache[i] = h_out - h_in if mode == "offset" else h_out
        outs.append(out)
    return outs


def run_plan(parts, plan, inputs, corrections=None):
    dispatcher = Dispatcher(plan, eager_variants(parts, plan), corrections)
    return [dispatcher(x) for x in inputs]


def step_inputs(parts, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    return [parts.example_inputs(BATCH, gen) for _ in range(steps)]


@pytest.mark.parametrize("mode", ["offset", "output"])
def test_block_replay_matches_reference(unet, mode):
    spec, model, parts = unet
    last = parts.num_blocks - 1
    recompute = {0: [0, 3], 1: [0, 2, 4], last: [0]}
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": 5, "cache": mode, "recompute": recompute}), spec)
    inputs = step_inputs(parts, 5, seed=1)
    got = run_plan(parts, plan, inputs)
    want = block_reference(model, parts, inputs, recompute, mode)
    full = [reference_step(model, parts, x, {})[0] for x in inputs]
    for s in range(5):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
        if s > 0:
            assert (got[s] - full[s]).abs().max() > 1e-4, "a cached step that equals the full step proves nothing"


def test_per_channel_scale_shift_broadcasts_on_dim_1(tiny):
    spec, model, parts = tiny
    recompute = {0: [0, 3], 2: [0]}  # widths 16 (8x8): corrections (steps, 16, 1, 1)
    steps = 4
    gen = torch.Generator().manual_seed(2)
    scale = {i: 1 + 0.1 * torch.randn(steps, *parts.channel_shape(i), generator=gen) for i in recompute}
    shift = {i: 0.1 * torch.randn(steps, *parts.channel_shape(i), generator=gen) for i in recompute}
    tensors = {f"scale.b{i}": scale[i] for i in recompute} | {f"shift.b{i}": shift[i] for i in recompute}
    plan = Plan.from_replays(4, [CacheRange(f"b{i}", i, i + 1) for i in recompute],
                             [{f"b{i}" for i, c in recompute.items() if s not in c} for s in range(steps)],
                             corrected=True)
    inputs = step_inputs(parts, steps, seed=3)
    got = run_plan(parts, plan, inputs, corrections=tensors)
    want = block_reference(model, parts, inputs, recompute, "offset", scale, shift)
    plain = block_reference(model, parts, inputs, recompute, "offset")
    for s in range(steps):
        torch.testing.assert_close(got[s], want[s], msg=f"step {s}")
    assert (got[1] - plain[1]).abs().max() > 1e-4, "the correction must change replayed steps"


def test_multi_block_replay_within_an_up_level(tiny):
    """Blocks 2-3 (one up level, a resnet between them) replayed as one offset range, as Δ-DiT's back range."""
    spec, model, parts = tiny
    plan = Plan.from_replays(4, [CacheRange("back", 2, 4)], [set(), {"back"}, {"back"}])
    inputs = step_inputs(parts, 3, seed=4)
    got = run_plan(parts, plan, inputs)
    _, seen = reference_step(model, parts, inputs[0], {})
    delta = seen[3][1] - seen[2][0]  # the range's output minus its input
    for s in (1, 2):
        start = {}
        replace = {2: lambda h, _o: start.setdefault("h", h), 3: lambda _h, _o: start["h"] + delta}
        want, _ = reference_step(model, parts, inputs[s], replace)
        torch.testing.assert_close(got[s], want, msg=f"step {s}")


def test_variant_module_matches_the_dispatcher(tiny):
    """The flat module compilers trace (links and skips inside) computes what the host-chained variant does."""
    _, _, parts = tiny
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": 3, "recompute": {1: [0], 3: [0, 2]}}),
                    get_spec("unet-tiny"))
    inputs = step_inputs(parts, 3, seed=5)
    dispatcher = Dispatcher(plan, eager_variants(parts, plan))
    caches = {}
    for s, x in enumerate(inputs):
        module = VariantModule(parts, plan, plan.steps[s])
        with torch.no_grad():
            outs = module(*[x[k] for k in parts.input_names], *[caches[n] for n in plan.steps[s].replay])
        caches.update(zip(plan.steps[s].record, outs[1:]))
        torch.testing.assert_close(outs[0], dispatcher(x), rtol=0, atol=0)


def test_plan_hash_survives_the_manifest_round_trip_with_16_blocks():
    """SD 1.5 has 16 attention layers: recompute tables mix one- and two-digit block keys, which a manifest's JSON
    gives back as strings in another order; the plan hash must not change."""
    schedule = parse_schedule({"kind": "block-cache", "steps": 4, "recompute": {2: [0, 2], 10: [0], 15: [0, 3]}})
    plan = plan_for(schedule, get_spec("sd15-unet"))
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))).hash() == plan.hash()


@pytest.mark.slow
def test_sd15_chain_equals_diffusers_at_256px():
    """The full-size SD 1.5 U-Net (random weights, 32x32 latents): chained segments equal its forward."""
    spec = at_resolution(get_spec("sd15-unet"), 256)
    model, _ = load_model(spec, random_weights=True, seed=0)
    parts = UNetParts(model, spec)
    inputs = parts.example_inputs(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = diffusers_forward(model, inputs)
        torch.testing.assert_close(chain(parts, inputs, tuple(range(17))), want, rtol=0, atol=0)


def test_weights_from_a_pipeline_folder_and_mismatches(tmp_path, tiny):
    from ditcache.graphs.weights import WeightsError

    spec, model, _ = tiny
    model.save_pretrained(tmp_path / "pipe" / "unet")  # the layout of a StableDiffusionPipeline folder
    loaded, info = load_model(spec, tmp_path / "pipe")
    assert info.source.endswith("unet/diffusion_pytorch_model.safetensors")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(WeightsError, match="do not fit unet-fmnist"):
        load_model(get_spec("unet-fmnist"), tmp_path / "pipe")


def test_unet_weight_errors_say_what_to_give(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from ditcache.graphs.weights import WeightsError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing to find
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsError, match="(?s)StableDiffusionPipeline folder.*--random-weights") as info:
        load_model(get_spec("sd15-unet"))
    assert "facebookresearch" not in str(info.value)  # no DiT checkpoint advice for a U-Net
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, tmp_path / "v1-5.safetensors")
    with pytest.raises(WeightsError, match="original .*from_single_file"):
        load_model(get_spec("sd15-unet"), tmp_path / "v1-5.safetensors")
    spec = get_spec("unet-tiny")
    model, _ = load_model(spec, random_weights=True)
    model.save_pretrained(tmp_path / "tiny")
    with pytest.raises(WeightsError, match="do not fit sd15-unet"):  # shapes first, then the folder's config
        load_model(get_spec("sd15-unet"), tmp_path / "tiny")
