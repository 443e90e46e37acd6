"""``ditcache.apply`` on the stock FluxPipeline, StableDiffusion3Pipeline and WanPipeline (tiny sizes, no text
encoders, no VAE, prompt embeddings passed, output_type="latent"): the full schedule equals the stock pipeline, a
cached schedule equals ditcache's own loop with the same schedule; WanPipeline's two calls per step are one step
with a dispatcher (caches, step counter) per branch, and a call out of step is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import ditcache
from ditcache.compiler.runtime.sampling import make_scheduler
from ditcache.graphs import full_schedule, get_spec, load_model, parse_schedule

sys.path.insert(0, str(Path(__file__).parent / "compiler"))
from test_flow_sampling import SEED, ours, prompts_for  # noqa: E402

pytest.importorskip("transformers", reason="diffusers' pipelines import transformers")

STEPS = 4
DELTA = {"kind": "delta-dit", "steps": STEPS, "boundary": 2, "interval": 2, "cached_blocks": 2}
CASES = [("flux-tiny", 3.5), ("sd3-tiny", 5.0), ("wan-tiny", 5.0)]


@pytest.fixture(scope="module")
def pipes():
    built = {}

    def get(name):
        if name not in built:
            spec = get_spec(name)
            model, _ = load_model(spec, random_weights=True, seed=0)
            pipe = spec.family_record.stock.build(model, None, make_scheduler(spec.sampler, spec.scheduler_config))
            pipe.set_progress_bar_config(disable=True)
            built[name] = (spec, model, pipe)
        return built[name]

    return get


def run(spec, pipe, prompts, guidance):
    stock = spec.family_record.stock
    out = pipe(**stock.call_inputs(spec, (), prompts, guidance), guidance_scale=guidance, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(SEED))
    return getattr(out, stock.output)


@pytest.mark.parametrize("name, guidance", CASES)
def test_apply_full_equals_stock_and_cached_equals_own_loop(pipes, name, guidance):
    spec, model, pipe = pipes(name)
    prompts = prompts_for(spec)
    stock = run(spec, pipe, prompts, guidance)
    with ditcache.apply(pipe, full_schedule(STEPS)):
        full = run(spec, pipe, prompts, guidance)
    torch.testing.assert_close(full, stock, rtol=0, atol=0)  # the decomposition is diffusers' forward

    with ditcache.apply(pipe, parse_schedule(DELTA)) as handle:
        cached = run(spec, pipe, prompts, guidance)
        dispatchers = list(handle.denoiser._dispatchers.values())
    assert pipe.transformer is model  # removed again
    want, _ = ours(spec, model, prompts, STEPS, guidance, parse_schedule(DELTA))
    # WanPipeline: two calls per step here, one [negative; positive] batch in ditcache's loop (fp32 rounding)
    tolerance = 1e-5 if name == "wan-tiny" else 0.0
    torch.testing.assert_close(cached, want, rtol=tolerance, atol=tolerance)
    assert (cached - full).abs().max() > 1e-3  # the cache really replays
    branches = 2 if name == "wan-tiny" else 1  # FLUX.1-dev embeds guidance, SD3 batches it: one call per step
    assert len(dispatchers) == branches and all(d.step == STEPS for d in dispatchers)
    assert len({id(d.caches) for d in dispatchers}) == branches


def test_wan_branches_keep_their_own_caches(pipes):
    """One dispatcher for both of WanPipeline's calls (calls counted as steps, one cache) gives other latents."""
    spec, model, pipe = pipes("wan-tiny")
    prompts = prompts_for(spec)
    with ditcache.apply(pipe, parse_schedule(DELTA)):
        right = run(spec, pipe, prompts, 5.0)
    wrong_plan = parse_schedule({**DELTA, "steps": 2 * STEPS})  # what a call-counting dispatcher would run
    with ditcache.apply(pipe, wrong_plan) as handle:
        handle.denoiser.cache_context = _no_context  # every call one step of one shared dispatcher
        pipe.scheduler.__dict__.pop("set_timesteps")  # let the pipeline ask for 4 steps
        handle.denoiser.reset()
        wrong = run(spec, pipe, prompts, 5.0)
    assert (wrong - right).abs().max() > 1e-3


def _no_context(name, **kwargs):
    import contextlib

    return contextlib.nullcontext()


def test_a_branch_out_of_step_is_refused(pipes):
    spec, model, pipe = pipes("wan-tiny")
    inputs = {"hidden_states": torch.randn(1, *spec.latent_shape), "timestep": torch.tensor([999.0]),
              "encoder_hidden_states": torch.randn(1, spec.text_length, 32), "return_dict": False}
    with ditcache.apply(pipe, parse_schedule(DELTA)) as handle:
        denoiser = handle.denoiser
        with denoiser.cache_context("cond", step_index=0):
            denoiser(**inputs)
        with denoiser.cache_context("uncond", step_index=0):
            denoiser(**inputs)
        with pytest.raises(RuntimeError, match="branch 'uncond' at step 0, but that branch's dispatcher is at step 1"):
            with denoiser.cache_context("uncond", step_index=0):  # a repeated call of one branch
                denoiser(**inputs)
        assert {k[-1]: d.step for k, d in denoiser._dispatchers.items()} == {"cond": 1, "uncond": 1}


def test_flux_latent_size_comes_from_img_ids(pipes):
    """Packed tokens do not tell height from width: the graphs are built for the size img_ids lay out."""
    spec, model, pipe = pipes("flux-tiny")
    prompts = prompts_for(spec)
    stock = spec.family_record.stock
    inputs = {**stock.call_inputs(spec, (), prompts, 3.5), "height": 64, "width": 128}  # 8x16 latents
    want = pipe(**inputs, guidance_scale=3.5, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(SEED)).images
    with ditcache.apply(pipe, full_schedule(STEPS)) as handle:
        got = pipe(**inputs, guidance_scale=3.5, num_inference_steps=STEPS,
                   generator=torch.Generator().manual_seed(SEED)).images
        assert any("latent_shape=(4, 8, 16)" in k[-2] for k in handle.denoiser._dispatchers)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_flux_true_cfg_runs_two_branches(pipes):
    """FluxPipeline's true_cfg_scale: a second (negative-prompt) call per step in cache_context("uncond"): the full
    schedule still equals the stock pipeline, a cached one keeps one dispatcher per branch, each at the last step."""
    spec, model, pipe = pipes("flux-tiny")
    prompts = prompts_for(spec)
    stock = spec.family_record.stock
    inputs = {**stock.call_inputs(spec, (), prompts, 3.5), "negative_prompt_embeds": prompts.negatives()[0],
              "negative_pooled_prompt_embeds": prompts.negative_pooling(), "true_cfg_scale": 2.0}

    def call():
        return pipe(**inputs, guidance_scale=3.5, num_inference_steps=STEPS,
                    generator=torch.Generator().manual_seed(SEED)).images

    want = call()
    with ditcache.apply(pipe, full_schedule(STEPS)):
        torch.testing.assert_close(call(), want, rtol=0, atol=0)
    with ditcache.apply(pipe, parse_schedule(DELTA)) as handle:
        cached = call()
        steps = {k[-1]: d.step for k, d in handle.denoiser._dispatchers.items()}
    assert steps == {"cond": STEPS, "uncond": STEPS}
    assert (cached - want).abs().max() > 1e-3
