"""apply(pipe, ...) on a stock StableDiffusionPipeline (tiny, built here: CLIP text encoder, VAE, unet-tiny): only
the U-Net is replaced; the text encoder and the VAE stay the pipeline's own."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="a StableDiffusionPipeline needs transformers' CLIPTextModel")

import ditcache  # noqa: E402
from ditcache.compiler.runtime.sampling import SampleRequest  # noqa: E402
from ditcache.compiler.runtime.prompts import PromptEmbeddings  # noqa: E402
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan  # noqa: E402
from ditcache.compiler.runtime.sampling import make_scheduler  # noqa: E402
from ditcache.graphs import get_spec, load_model, parse_schedule  # noqa: E402
from ditcache.graphs.planning import plan_for  # noqa: E402

STEPS = 5
SCHEDULE = {"kind": "block-cache", "steps": STEPS, "recompute": {0: [0, 3], 2: [0, 2], 3: [0]}}


@pytest.fixture(scope="module")
def sd():
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = get_spec("unet-tiny")
    unet, _ = load_model(spec, random_weights=True, seed=0)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=spec.config["cross_attention_dim"], intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=spec.text_length, projection_dim=24)).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet,
                                   scheduler=make_scheduler("ddim", spec.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():  # prompts encoded by the pipeline's own text encoder (token ids: no tokenizer files here)
        tokens = torch.randint(1, 100, (3, spec.text_length), generator=torch.Generator().manual_seed(1))
        embeds = text_encoder(tokens)[0]  # (3, 77, 24): two prompts and the negative one
    return pipe, spec, unet, embeds[:2], embeds[2:]


def run(pipe, embeds, negative, seed=4):
    return pipe(prompt_embeds=embeds, negative_prompt_embeds=negative.expand_as(embeds), guidance_scale=7.5,
                num_inference_steps=STEPS, generator=torch.manual_seed(seed), output_type="pt").images


def test_apply_replaces_only_the_unet_and_matches_the_runtime(sd):
    pipe, spec, unet, embeds, negative = sd
    text_encoder, vae = pipe.text_encoder, pipe.vae
    stock = run(pipe, embeds, negative)
    with ditcache.apply(pipe, SCHEDULE) as handle:
        assert pipe.unet is handle.denoiser and pipe.text_encoder is text_encoder and pipe.vae is vae
        cached = run(pipe, embeds, negative)
        again = run(pipe, embeds, negative)  # caches reset between runs
        assert handle.denoiser.dispatcher.step == STEPS
    assert pipe.unet is unet and pipe.text_encoder is text_encoder and pipe.vae is vae
    torch.testing.assert_close(run(pipe, embeds, negative), stock, rtol=0, atol=0)
    torch.testing.assert_close(again, cached, rtol=0, atol=0)
    assert (cached - stock).abs().max() > 1e-4, "the cached run must differ from the full one"

    plan = plan_for(parse_schedule(SCHEDULE), spec)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    prompts = PromptEmbeddings(embeds, mask, negative, mask[:1])
    latents = sample_with_plan(eager_dispatcher(unet, spec, plan), spec,
                               SampleRequest(steps=STEPS, guidance_scale=7.5, seed=4, prompts=prompts))
    with torch.no_grad():
        images = (vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(cached, images)


def test_full_schedule_through_apply_equals_stock(sd):
    pipe, _, _, embeds, negative = sd
    stock = run(pipe, embeds, negative)
    with ditcache.apply(pipe, {"kind": "full", "steps": STEPS}, granularity="segment"):
        torch.testing.assert_close(run(pipe, embeds, negative), stock)
