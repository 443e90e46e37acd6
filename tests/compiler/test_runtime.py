"""Eager runtime: the full schedule reproduces DiTPipeline; the dispatcher owns caches and steps."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.dispatcher import Dispatcher

from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample

from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import full_schedule, parse_schedule
from ditcache.graphs.planning import plan_for


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_full_schedule_equals_dit_pipeline(tiny_model, tiny_spec, tiny_vae, scheduler):
    from diffusers import DiTPipeline

    from ditcache.compiler.runtime.sampling import make_scheduler

    steps, classes, seed = 6, [3, 999], 11
    pipe = DiTPipeline(transformer=tiny_model, vae=tiny_vae, scheduler=make_scheduler(scheduler, tiny_spec.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    want = pipe(class_labels=classes, guidance_scale=4.0, generator=torch.manual_seed(seed),
                num_inference_steps=steps, output_type="pt").images

    dispatcher = eager_dispatcher(tiny_model, tiny_spec, plan_for(full_schedule(steps), tiny_spec))
    latents = sample_with_plan(dispatcher, tiny_spec, SampleRequest(tuple(classes), steps, 4.0, seed, scheduler))
    with torch.no_grad():
        images = (tiny_vae.decode(latents / tiny_vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, want)


def test_dispatcher_full_equals_plain_model_and_cached_differs(tiny_model, tiny_spec):
    request = SampleRequest((1, 2, 3), steps=8, guidance_scale=3.0, seed=5)
    reference = sample(model_denoiser(tiny_model), tiny_spec, request)
    full = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, plan_for(full_schedule(8), tiny_spec)),
                            tiny_spec, request)
    torch.testing.assert_close(full, reference, rtol=0, atol=0)
    cached_plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 8, "interval": 2, "cached_blocks": 2}),
                           tiny_spec)
    cached = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, cached_plan), tiny_spec, request)
    assert (cached - full).abs().max() > 1e-3


def test_guidance_off_does_not_double_the_batch(tiny_model, tiny_spec):
    seen = []

    def denoiser(inputs):
        seen.append(inputs["x"].shape[0])
        return model_denoiser(tiny_model)(inputs)

    sample(denoiser, tiny_spec, SampleRequest((1, 2), steps=2, guidance_scale=1.0))
    assert seen == [2, 2]


def test_dispatcher_frees_caches_and_needs_reset(tiny_parts, tiny_spec):
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 4, "boundary": 4, "interval": 2, "cached_blocks": 2}
                          ), tiny_spec)
    dispatcher = Dispatcher(plan, eager_variants(tiny_parts, plan))
    x = tiny_parts.example_inputs(2)
    dispatcher(x)
    assert set(dispatcher.caches) == {"back"}
    dispatcher(x)
    assert dispatcher.caches == {}  # step 2 records a fresh one; nothing is kept past its last use
    dispatcher(x), dispatcher(x)
    with pytest.raises(RuntimeError, match="call reset"):
        dispatcher(x)
    dispatcher.reset()
    dispatcher(x)


def test_dispatcher_rejects_missing_variants_and_corrections(tiny_parts):
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 4, "interval": 2, "cached_blocks": 2}), tiny_parts.spec)
    with pytest.raises(ValueError, match="no callable for variant"):
        Dispatcher(plan, {})
    corrected = plan_for(parse_schedule({"kind": "block-cache", "steps": 3, "recompute": {1: [0]}}), tiny_parts.spec)
    object.__setattr__(corrected, "corrected", True)
    with pytest.raises(ValueError, match="no corrections"):
        Dispatcher(corrected, eager_variants(tiny_parts, corrected))


def test_step_count_mismatch(tiny_model, tiny_spec):
    dispatcher = eager_dispatcher(tiny_model, tiny_spec, plan_for(full_schedule(5), tiny_spec))
    with pytest.raises(ValueError, match="schedule has 5 steps but 4 were requested"):
        sample_with_plan(dispatcher, tiny_spec, SampleRequest((1,), steps=4))


def test_bad_class_label(tiny_model, tiny_spec):
    with pytest.raises(ValueError, match="outside"):
        sample(model_denoiser(tiny_model), tiny_spec, SampleRequest((1000,), steps=2))


@pytest.mark.parametrize("scheduler", ["euler", "ddpm"])
def test_other_schedulers_run(tiny_model, tiny_spec, scheduler):
    request = SampleRequest((4,), steps=3, seed=1, scheduler=scheduler)
    out = sample(model_denoiser(tiny_model), tiny_spec, request)
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_sample_seeds_make_images_independent_of_batching(tiny_model, tiny_spec):
    from ditcache.compiler.runtime.sampling import initial_noise

    noise = initial_noise(tiny_spec, SampleRequest((1, 2, 3), 3, sample_seeds=(7, 8, 9)))
    torch.testing.assert_close(noise[1:2], initial_noise(tiny_spec, SampleRequest((2,), 3, sample_seeds=(8,))),
                               rtol=0, atol=0)
    together = sample(model_denoiser(tiny_model), tiny_spec, SampleRequest((1, 2, 3), 3, 4.0, sample_seeds=(7, 8, 9)))
    alone = sample(model_denoiser(tiny_model), tiny_spec, SampleRequest((2,), 3, 4.0, sample_seeds=(8,)))
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-4)  # BLAS blocks by batch size
    with pytest.raises(ValueError, match="2 sample seeds for 3 images"):
        sample(model_denoiser(tiny_model), tiny_spec, SampleRequest((1, 2, 3), 3, 4.0, sample_seeds=(1, 2)))
