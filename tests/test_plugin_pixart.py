"""apply(pipe, ...) on a stock PixArtAlphaPipeline: PixArt's call signature (encoder_hidden_states,
encoder_attention_mask, timestep, added_cond_kwargs) goes through the cached denoiser unchanged."""

from __future__ import annotations

import pytest
import torch

import ditcache
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import parse_schedule
from ditcache.graphs.planning import plan_for

pytest.importorskip("transformers", reason="diffusers' PixArtAlphaPipeline needs transformers")

DELTA = {"kind": "delta-dit", "steps": 6, "boundary": 3, "interval": 2, "cached_blocks": 2}


@pytest.fixture()
def pipe(pixart_model, pixart_spec):
    from diffusers import AutoencoderKL, PixArtAlphaPipeline

    from ditcache.compiler.runtime.sampling import make_scheduler

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    pipe = PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=pixart_model,
                               scheduler=make_scheduler("dpm++", pixart_spec.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompts, steps=6, seed=4):
    negative, negative_mask = prompts.negatives()
    return pipe(negative_prompt=None, prompt_embeds=prompts.embeds, prompt_attention_mask=prompts.mask,
                negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask, guidance_scale=4.5,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), output_type="latent",
                use_resolution_binning=False).images


def test_apply_matches_ditcache_runtime_and_remove_restores(pipe, pixart_model, pixart_spec, pixart_prompts):
    stock = run(pipe, pixart_prompts)
    with ditcache.apply(pipe, DELTA) as handle:
        cached = run(pipe, pixart_prompts)
        again = run(pipe, pixart_prompts)  # caches reset between runs
        assert handle.denoiser.dispatcher.step == 6
    assert pipe.transformer is pixart_model
    torch.testing.assert_close(run(pipe, pixart_prompts), stock, rtol=0, atol=0)
    torch.testing.assert_close(again, cached, rtol=0, atol=0)
    assert (cached - stock).abs().max() > 1e-3 * stock.abs().max()

    plan = plan_for(parse_schedule(DELTA), pixart_spec)
    latents = sample_with_plan(eager_dispatcher(pixart_model, pixart_spec, plan), pixart_spec,
                               SampleRequest(steps=6, guidance_scale=4.5, seed=4, scheduler="dpm++",
                                             prompts=pixart_prompts))
    torch.testing.assert_close(cached, latents)


@pytest.mark.parametrize("granularity", ["variant", "segment"])
def test_full_schedule_through_apply_equals_stock(pipe, pixart_prompts, granularity):
    stock = run(pipe, pixart_prompts)
    with ditcache.apply(pipe, {"kind": "full", "steps": 6}, granularity=granularity):
        torch.testing.assert_close(run(pipe, pixart_prompts), stock)


def test_apply_with_an_engine_directory(pipe, pixart_prompts, tmp_path):
    from ditcache.export.export_engines import ExportRequest, export_engines

    (tmp_path / "s.yaml").write_text("kind: delta-dit\nsteps: 6\nboundary: 3\ninterval: 2\ncached_blocks: 2\n")
    export_engines(ExportRequest(model="pixart-tiny", schedule=tmp_path / "s.yaml", out=tmp_path / "eng",
                                 backend="eager", random_weights=True, batch_size=2), log=lambda m: None,
                   progress=False)
    with ditcache.apply(pipe, DELTA):
        want = run(pipe, pixart_prompts)
    with ditcache.apply(pipe, tmp_path / "s.yaml", engines=tmp_path / "eng"):
        torch.testing.assert_close(run(pipe, pixart_prompts), want)


def test_micro_conditions_pass_through(pixart_prompts):
    """A 1024-MS-style model: resolution and aspect ratio arrive in added_cond_kwargs and become graph inputs."""
    from types import SimpleNamespace

    from ditcache.compiler.runtime.sampling import make_scheduler
    from ditcache.graphs import get_spec, load_model
    from ditcache.plugin import CachedDenoiser

    spec = get_spec("pixart-tiny-ms")
    model, _ = load_model(spec, random_weights=True)
    holder = SimpleNamespace(transformer=model, scheduler=make_scheduler("dpm++", spec.scheduler_config))  # what apply() touches
    handle = ditcache.apply(holder, {"kind": "full", "steps": 2})
    assert isinstance(holder.transformer, CachedDenoiser)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([999, 999])
    added = {"resolution": torch.tensor([[64.0, 64.0]] * 2), "aspect_ratio": torch.ones(2, 1)}
    kwargs = dict(encoder_hidden_states=pixart_prompts.embeds, encoder_attention_mask=pixart_prompts.mask,
                  timestep=t, added_cond_kwargs=added, return_dict=False)
    with torch.no_grad():
        got = holder.transformer(x, **kwargs)[0]
        want = model(x, **kwargs)[0]
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="added_cond_kwargs\\['resolution'\\]"):
        holder.transformer(x, **dict(kwargs, added_cond_kwargs=None))
    handle.remove()
    assert holder.transformer is model
