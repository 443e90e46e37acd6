"""Flow-matching sampling (FLUX, SD3, Wan) in ditcache's own loop: for the full schedule, the final latents equal
those of diffusers' FluxPipeline, StableDiffusion3Pipeline and WanPipeline (no text encoders, no VAE, prompt
embeddings passed, output_type="latent") on the tiny sizes; the sigmas, dynamic shift, guidance and timestep
conventions of each; caching through the same loop; bad conditioning refused with the fix.

Tolerances: FLUX and SD3 are compared exactly (rtol = atol = 0: the same ops on the same batch). WanPipeline runs
its two guidance branches as two transformer calls, ditcache's loop as one [negative; positive] batch: batched
matmuls round differently, so that comparison is assert_close(rtol=1e-5, atol=1e-5); the same loop with the
branches run as two calls equals the pipeline exactly.
"""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.flow_sampling import image_tokens, set_flow_timesteps
from ditcache.compiler.runtime.prompts import PromptEmbeddings
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest, make_scheduler, sample
from ditcache.graphs import full_schedule, get_spec, load_model, parse_schedule, parts_for
from ditcache.graphs.flow_spec import calculate_shift

SEED = 7


def prompts_for(spec, images: int = 2, seed: int = 1, negatives: bool = True) -> PromptEmbeddings:
    """Random prompt embeddings of the model's text shape (+ pooled ones where it takes them)."""
    gen = torch.Generator().manual_seed(seed)
    length = spec.text_length
    channels = int(spec.config.get("joint_attention_dim") or spec.config.get("text_dim"))
    pooled = spec.config.get("pooled_projection_dim") if "pooled_projections" in spec.conditioning_inputs else None
    mask = torch.ones(images, length, dtype=torch.long)
    return PromptEmbeddings(
        torch.randn(images, length, channels, generator=gen), mask,
        torch.randn(1, length, channels, generator=gen) if negatives else None,
        torch.ones(1, length, dtype=torch.long) if negatives else None,
        None if pooled is None else torch.randn(images, pooled, generator=gen),
        None if pooled is None or not negatives else torch.randn(1, pooled, generator=gen))


@pytest.fixture(scope="module")
def models():
    built = {}

    def get(name):
        if name not in built:
            spec = get_spec(name)
            built[name] = (spec, load_model(spec, random_weights=True, seed=0)[0])
        return built[name]

    return get


def stock_latents(spec, model, prompts, steps, guidance):
    """diffusers' own pipeline of the family (its registry record), latents out."""
    pytest.importorskip("transformers", reason="diffusers' pipelines import transformers")
    stock = spec.family_record.stock
    pipe = stock.build(model, None, make_scheduler(spec.sampler, spec.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(**stock.call_inputs(spec, (), prompts, guidance), guidance_scale=guidance, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(SEED))
    return getattr(out, stock.output), pipe


def ours(spec, model, prompts, steps, guidance, schedule=None):
    dispatcher = eager_dispatcher(model, spec, _plan(spec, schedule or full_schedule(steps)))
    request = SampleRequest(steps=steps, guidance_scale=guidance, seed=SEED, scheduler=spec.sampler, prompts=prompts)
    return sample_with_plan(dispatcher, spec, request), dispatcher


def _plan(spec, schedule):
    from ditcache.graphs.planning import plan_for

    return plan_for(schedule, spec)


@pytest.mark.parametrize("name, steps, guidance", [
    ("flux-tiny", 4, 3.5),  # FLUX.1-dev: guidance embedded, dynamic shift, sigmas from the pipeline
    ("flux-schnell-tiny", 3, 0.0),  # FLUX.1-schnell: no guidance, shift 1
    ("sd3-tiny", 4, 5.0),  # SD3: CFG as one [negative; positive] batch, shift 3
    ("sd3-tiny", 3, 1.0),  # SD3 without guidance
])
def test_full_schedule_equals_the_stock_pipeline(models, name, steps, guidance):
    spec, model = models(name)
    prompts = prompts_for(spec)
    want, pipe = stock_latents(spec, model, prompts, steps, guidance)
    got, dispatcher = ours(spec, model, prompts, steps, guidance)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert dispatcher.step == steps  # one denoiser call per step (no second call for guidance)
    scheduler = make_scheduler(spec.sampler, spec.scheduler_config)
    set_flow_timesteps(scheduler, spec, steps)
    torch.testing.assert_close(scheduler.sigmas, pipe.scheduler.sigmas, rtol=0, atol=0)
    if spec.flow.packed:
        assert got.shape == (2, image_tokens(spec), spec.in_channels)  # packed, as the pipeline returns them
    else:
        assert got.shape == (2, *spec.latent_shape)
    assert got.std() > 0.05


def test_wan_cfg_batched_equals_the_two_pipeline_calls(models):
    """WanPipeline: UniPC (flow prediction, shift 3), integer timesteps, CFG as two transformer calls per step."""
    spec, model = models("wan-tiny")
    prompts = prompts_for(spec)
    steps, guidance = 4, 5.0
    want, _ = stock_latents(spec, model, prompts, steps, guidance)
    got, dispatcher = ours(spec, model, prompts, steps, guidance)
    assert dispatcher.step == steps  # the two branches are one batch: one call, one step
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == (2, *spec.latent_shape) and got.std() > 0.05

    parts = parts_for(model, spec)

    def two_calls(inputs):  # the stateless full chain, once per branch, as the pipeline runs them
        halves = [{k: v.chunk(2)[i] for k, v in inputs.items()} for i in (0, 1)]
        return torch.cat([_full_chain(parts, half) for half in halves])

    request = SampleRequest(steps=steps, guidance_scale=guidance, seed=SEED, scheduler=spec.sampler, prompts=prompts)
    torch.testing.assert_close(sample(two_calls, spec, request), want, rtol=0, atol=0)


def _full_chain(parts, inputs):
    head = parts.head()
    env = dict(inputs)
    env.update(zip(head.outputs, head(*(inputs[n] for n in head.inputs))))
    seg = parts.blocks(0, parts.num_blocks)
    env["h"] = seg(*(env[n] for n in seg.inputs))
    return parts.tail()(*(env[n] for n in parts.tail().inputs))


def test_wan_timesteps_are_integers_and_unshifted_by_resolution(models):
    spec, _ = models("wan-tiny")
    scheduler = make_scheduler(spec.sampler, spec.scheduler_config)
    set_flow_timesteps(scheduler, spec, 5)
    assert scheduler.timesteps.dtype == torch.int64 and scheduler.timesteps[0] == 999
    assert type(scheduler).__name__ == "UniPCMultistepScheduler" and scheduler.config.use_flow_sigmas


def test_dynamic_shift_is_the_pipelines_mu():
    """FLUX.1-dev shifts its sigmas by image size: mu from the image token count (Python floats, evaluated as
    diffusers' pipelines do), here at 1024x1024 (4096 tokens); FLUX.1-schnell does not shift."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as flux_shift

    for tokens in (16, 256, 1000, 4096):
        assert calculate_shift(tokens) == flux_shift(tokens)
        assert calculate_shift(tokens, 256, 4096, 0.5, 1.16) == flux_shift(tokens, 256, 4096, 0.5, 1.16)
    dev, schnell = get_spec("flux-dev"), get_spec("flux-schnell")
    assert image_tokens(dev) == 4096
    ours_dev = make_scheduler(dev.sampler, dev.scheduler_config)
    set_flow_timesteps(ours_dev, dev, 28)
    want = make_scheduler(dev.sampler, dev.scheduler_config)
    want.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=flux_shift(4096))
    torch.testing.assert_close(ours_dev.sigmas, want.sigmas, rtol=0, atol=0)
    ours_schnell = make_scheduler(schnell.sampler, schnell.scheduler_config)
    set_flow_timesteps(ours_schnell, schnell, 28)
    torch.testing.assert_close(ours_schnell.sigmas[:-1], torch.from_numpy(np.linspace(1.0, 1 / 28, 28)).float(),
                               rtol=0, atol=0)
    assert (ours_dev.sigmas[1:-1] > ours_schnell.sigmas[1:-1]).all()  # mu = 1.15 shifts every sigma up


def test_cached_plan_runs_through_the_flow_loop(models):
    """A Δ-DiT plan on FLUX (front range across the dual/single boundary): one call per step, different latents."""
    spec, model = models("flux-tiny")
    prompts = prompts_for(spec)
    schedule = parse_schedule({"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2, "cached_blocks": 3})
    full, _ = ours(spec, model, prompts, 4, 3.5)
    cached, dispatcher = ours(spec, model, prompts, 4, 3.5, schedule)
    assert dispatcher.step == 4
    assert (cached - full).abs().max() > 1e-4
    assert (cached - full).abs().max() < full.abs().max()


def test_bad_conditioning_is_refused_with_the_fix(models):
    flux, _ = models("flux-schnell-tiny")
    sd3, _ = models("sd3-tiny")
    dit = get_spec("dit-tiny")

    def run(spec, prompts, guidance, scheduler=None):
        request = SampleRequest(steps=2, guidance_scale=guidance, scheduler=scheduler or spec.sampler, prompts=prompts)
        return sample(lambda inputs: None, spec, request)

    with pytest.raises(ValueError, match="guidance-distilled"):
        run(flux, prompts_for(flux), 3.5)
    no_pooled = prompts_for(flux)
    no_pooled = PromptEmbeddings(no_pooled.embeds, no_pooled.mask)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        run(flux, no_pooled, 0.0)
    positive_only = prompts_for(sd3, negatives=False)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        run(sd3, positive_only, 5.0)
    with pytest.raises(ValueError, match="diffusion model"):
        run(dit, None, 4.0, scheduler="flow-euler")
    with pytest.raises(ValueError, match="flow-matching model: sample it with --scheduler flow-euler"):
        run(sd3, prompts_for(sd3), 5.0, scheduler="ddim")
    wide = prompts_for(get_spec("flux-tiny"))
    wide = PromptEmbeddings(wide.embeds, wide.mask, pooled=torch.randn(2, 7))
    with pytest.raises(ValueError, match="pooled embeddings have 7 channels"):
        run(flux, wide, 0.0)


def test_pooled_embeddings_round_trip_through_a_file(tmp_path):
    prompts = prompts_for(get_spec("sd3-tiny"))
    prompts.save(tmp_path / "p.safetensors")
    loaded = PromptEmbeddings.load(tmp_path / "p.safetensors")
    torch.testing.assert_close(loaded.pooled, prompts.pooled, rtol=0, atol=0)
    torch.testing.assert_close(loaded.negative_pooling(), prompts.negative_pooled.expand(2, -1), rtol=0, atol=0)
    torch.testing.assert_close(loaded.select([1, 1]).pooled, prompts.pooled[[1, 1]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="negative_pooled_prompt_embeds has shape"):
        PromptEmbeddings(prompts.embeds, prompts.mask, pooled=prompts.pooled, negative_pooled=torch.randn(3, 16))


def test_guidance_batch_follows_the_familys_guidance_kind():
    """Only classifier-free guidance doubles the denoiser batch: FLUX.1-dev's scale 3.5 is a model input (one
    batch), SD3's and Wan's 5.0 run [negative; positive]; diffusion models double above 1 as before."""
    import argparse

    from ditcache.cli.export import export_guidance

    flux, schnell, sd3, wan, dit = (get_spec(n) for n in ("flux-tiny", "flux-schnell-tiny", "sd3-tiny", "wan-tiny",
                                                         "dit-tiny"))
    for spec, scale, doubled in [(flux, 3.5, False), (schnell, 0.0, False), (sd3, 5.0, True), (sd3, 1.0, False),
                                 (wan, 5.0, True), (dit, 4.0, True), (dit, 1.0, False)]:
        prompts = prompts_for(spec, images=3) if spec.text_conditioned else None
        labels = () if spec.text_conditioned else (1, 2, 3)
        request = SampleRequest(labels, 2, scale, scheduler=spec.sampler, prompts=prompts)
        assert spec.cfg_batch(scale) is doubled and request.uses_cfg(spec) is doubled, (spec.name, scale)
        assert request.denoiser_batch(spec) == (6 if doubled else 3), (spec.name, scale)
    args = argparse.Namespace(model="flux-tiny", no_guidance=False, guidance_batch=False)
    assert export_guidance(args) is False  # engines for FLUX.1-dev are built for the images' batch
    assert export_guidance(argparse.Namespace(model="sd3-tiny", no_guidance=False, guidance_batch=False)) is True


def test_resolution_and_frames_resize_the_latents():
    """--resolution (and Wan's frame count) through the family records' resize: the latents, the tokens and the
    dynamic shift follow; out-of-range sizes are refused with the reason."""
    from ditcache.graphs.registry import at_resolution

    dev = at_resolution(get_spec("flux-dev"), 512)
    assert dev.latent_shape == (16, 64, 64) and image_tokens(dev) == 1024 and dev.name == "flux-dev"
    assert at_resolution(get_spec("sd3-medium"), 768).latent_shape == (16, 96, 96)
    wan = at_resolution(get_spec("wan21-t2v-1.3b"), 256, frames=17)
    assert wan.latent_shape == (16, 5, 32, 32)
    assert at_resolution(get_spec("wan21-t2v-1.3b"), None, frames=81).latent_shape == (16, 21, 60, 104)
    assert at_resolution(get_spec("dit-tiny"), None) is get_spec("dit-tiny")
    with pytest.raises(ValueError, match="4k \\+ 1 frames"):
        at_resolution(wan, None, frames=16)
    with pytest.raises(ValueError, match="no frame count"):
        at_resolution(get_spec("flux-tiny"), None, frames=5)
    with pytest.raises(ValueError, match="no frame count"):
        at_resolution(get_spec("dit-tiny"), None, frames=5)
    with pytest.raises(ValueError, match="position table"):
        at_resolution(get_spec("sd3-tiny"), 256)  # 8 patches of 2 latents: at most 128 pixels
    with pytest.raises(ValueError, match="multiple of 16"):
        at_resolution(get_spec("flux-tiny"), 72)


@pytest.mark.parametrize("name, resolution, frames, guidance", [
    ("flux-tiny", 128, None, 3.5),  # 16x16 latents: 64 image tokens, another rotary table and mu
    ("sd3-tiny", 96, None, 5.0),  # 12x12 latents, the position table cropped differently
    ("wan-tiny", 48, 5, 1.0),  # 2 latent frames of 6x6
])
def test_resized_spec_equals_the_stock_pipeline_at_that_size(models, name, resolution, frames, guidance):
    from ditcache.graphs.registry import at_resolution

    spec, model = models(name)
    spec = at_resolution(spec, resolution, frames)
    prompts = prompts_for(spec)
    want, _ = stock_latents(spec, model, prompts, 3, guidance)
    got, _ = ours(spec, model, prompts, 3, guidance)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    latent = tuple(spec.latent_shape)
    assert latent[-2:] == (resolution // 8,) * 2 and (frames is None or latent[1] == (frames - 1) // 4 + 1)
