"""Text-conditioned sampling (PixArt-α): the full schedule equals diffusers' PixArtAlphaPipeline on the same
embeddings and seed; prompt embeddings from a file or a local T5; conditioning errors say the fix."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.compiler.runtime.prompts import PromptEmbeddings, encode_prompts
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import make_scheduler
from ditcache.graphs import full_schedule, get_spec, load_model, parse_schedule
from ditcache.graphs.planning import plan_for

DELTA = {"kind": "delta-dit", "steps": 6, "boundary": 3, "interval": 2, "cached_blocks": 2}


@pytest.fixture(scope="module")
def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()


def pixart_pipeline(model, vae, scheduler, tokenizer=None, text_encoder=None):
    pytest.importorskip("transformers", reason="diffusers' PixArtAlphaPipeline needs transformers")
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=model,
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler,steps,guidance", [("dpm++", 6, 4.5), ("lcm", 4, 0.0)])
def test_full_schedule_equals_pixart_pipeline(pixart_model, pixart_spec, pixart_prompts, tiny_vae, scheduler, steps,
                                              guidance):
    seed, p = 11, pixart_prompts
    negative, negative_mask = p.negatives()
    pipe = pixart_pipeline(pixart_model, tiny_vae, make_scheduler(scheduler, pixart_spec.scheduler_config))
    want = pipe(negative_prompt=None, prompt_embeds=p.embeds, prompt_attention_mask=p.mask,
                negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask,
                guidance_scale=guidance, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="pt", use_resolution_binning=False).images

    dispatcher = eager_dispatcher(pixart_model, pixart_spec, plan_for(full_schedule(steps), pixart_spec))
    request = SampleRequest(steps=steps, guidance_scale=guidance, seed=seed, scheduler=scheduler, prompts=p)
    latents = sample_with_plan(dispatcher, pixart_spec, request)
    with torch.no_grad():
        images = (tiny_vae.decode(latents / tiny_vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, want)
    assert images.std() > 0.01  # not a saturated constant image


@pytest.mark.parametrize("name", ["pixart-tiny", "pixart-tiny-ms"])
def test_dispatcher_full_equals_model_and_cached_differs(name, pixart_prompts):
    spec = get_spec(name)
    model, _ = load_model(spec, random_weights=True, seed=2)
    request = SampleRequest(steps=6, guidance_scale=4.5, seed=5, scheduler="dpm++", prompts=pixart_prompts)
    reference = sample(model_denoiser(model), spec, request)
    full = sample_with_plan(eager_dispatcher(model, spec, plan_for(full_schedule(6), spec)), spec, request)
    torch.testing.assert_close(full, reference, rtol=0, atol=0)
    cached = sample_with_plan(eager_dispatcher(model, spec, plan_for(parse_schedule(DELTA), spec)), spec, request)
    assert (cached - full).abs().max() > 1e-3


def test_micro_conditions_follow_the_image_size(pixart_prompts):
    spec = get_spec("pixart-tiny-ms")
    request = SampleRequest(steps=1, guidance_scale=4.5, scheduler="dpm++", prompts=pixart_prompts)
    cond = request.conditioning(spec).inputs(True, torch.float32, "cpu")
    assert list(cond) == ["encoder_hidden_states", "encoder_attention_mask", "resolution", "aspect_ratio"]
    torch.testing.assert_close(cond["resolution"], torch.full((4, 2), 64.0))  # 8 latent px x 8 = 64 image px
    torch.testing.assert_close(cond["aspect_ratio"], torch.ones(4, 1))
    # unconditional half first, as PixArtAlphaPipeline
    torch.testing.assert_close(cond["encoder_hidden_states"][:2], pixart_prompts.negatives()[0])
    torch.testing.assert_close(cond["encoder_attention_mask"][2:], pixart_prompts.mask)


def test_guidance_off_keeps_the_batch(pixart_model, pixart_spec, pixart_prompts):
    seen = []

    def denoiser(inputs):
        seen.append(tuple(inputs["encoder_hidden_states"].shape))
        return model_denoiser(pixart_model)(inputs)

    no_negatives = PromptEmbeddings(pixart_prompts.embeds, pixart_prompts.mask)
    sample(denoiser, pixart_spec, SampleRequest(steps=2, guidance_scale=1.0, scheduler="dpm++", prompts=no_negatives))
    assert seen == [(2, 8, 32), (2, 8, 32)]


def test_conditioning_errors_say_the_fix(pixart_model, pixart_spec, pixart_prompts, tiny_spec):
    run = model_denoiser(pixart_model)
    with pytest.raises(ValueError, match="text-conditioned: give prompt embeddings"):
        sample(run, pixart_spec, SampleRequest((1, 2), steps=2))
    with pytest.raises(ValueError, match="needs negative_prompt_embeds"):
        sample(run, pixart_spec, SampleRequest(steps=2, guidance_scale=4.5,
                                               prompts=PromptEmbeddings(pixart_prompts.embeds, pixart_prompts.mask)))
    short = PromptEmbeddings(pixart_prompts.embeds[:, :5], pixart_prompts.mask[:, :5])
    with pytest.raises(ValueError, match="5 tokens, pixart-tiny runs with 8"):
        sample(run, pixart_spec, SampleRequest(steps=2, guidance_scale=1.0, prompts=short))
    wide = PromptEmbeddings(torch.zeros(1, 8, 16), torch.ones(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="16 channels, pixart-tiny takes 32"):
        sample(run, pixart_spec, SampleRequest(steps=2, guidance_scale=1.0, prompts=wide))
    with pytest.raises(ValueError, match="class-conditional: give class labels"):
        sample(run, tiny_spec, SampleRequest(steps=2, prompts=pixart_prompts))
    with pytest.raises(ValueError, match=r"prompt_attention_mask has shape \(2, 7\)"):
        PromptEmbeddings(pixart_prompts.embeds, pixart_prompts.mask[:, :7])


def test_embeddings_file_roundtrip_and_defaults(tmp_path, pixart_prompts):
    from safetensors.torch import save_file

    pixart_prompts.save(tmp_path / "e.safetensors")
    loaded = PromptEmbeddings.load(tmp_path / "e.safetensors")
    for a, b in ((loaded.embeds, pixart_prompts.embeds), (loaded.negative_mask, pixart_prompts.negative_mask)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    save_file({"prompt_embeds": torch.zeros(3, 8, 32)}, str(tmp_path / "bare.safetensors"))
    bare = PromptEmbeddings.load(tmp_path / "bare.safetensors")
    assert bare.mask.sum() == 24 and bare.negative_embeds is None  # mask defaults to all tokens kept
    save_file({"embeds": torch.zeros(1, 8, 32)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="has no 'prompt_embeds' tensor"):
        PromptEmbeddings.load(tmp_path / "wrong.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptEmbeddings.load(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A tiny random T5 encoder (32 channels, as pixart-tiny's captions) and a sentencepiece tokenizer trained
    here on a few sentences, saved as a local folder: no hub, no download."""
    pytest.importorskip("transformers", reason="encoding prompts needs transformers")
    spm = pytest.importorskip("sentencepiece", reason="the T5 tokenizer needs sentencepiece")
    import io

    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    folder = tmp_path_factory.mktemp("t5")
    text = ["a red fox in the snow", "a small cactus with a happy face", "an astronaut riding a horse on mars",
            "a photo of a cat", "the quick brown fox jumps over the lazy dog"] * 20
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buffer, vocab_size=40,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    (folder / "spiece.model").write_bytes(buffer.getvalue())
    T5Tokenizer(vocab_file=str(folder / "spiece.model"), extra_ids=0).save_pretrained(folder)
    torch.manual_seed(0)
    T5EncoderModel(T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)).save_pretrained(folder)
    return folder


def test_encode_prompts_equals_the_pipeline(tiny_t5, pixart_model, tiny_vae, pixart_spec):
    from transformers import T5EncoderModel, T5Tokenizer

    prompts = ["a red fox in the snow", "a cat"]
    ours = encode_prompts(tiny_t5, prompts, max_length=8)
    pipe = pixart_pipeline(pixart_model, tiny_vae, make_scheduler("dpm++", pixart_spec.scheduler_config),
                           T5Tokenizer.from_pretrained(tiny_t5), T5EncoderModel.from_pretrained(tiny_t5).eval())
    embeds, mask, negative, negative_mask = pipe.encode_prompt(prompts, negative_prompt="", clean_caption=False,
                                                               max_sequence_length=8)
    torch.testing.assert_close(ours.embeds, embeds)
    torch.testing.assert_close(ours.mask, mask)
    torch.testing.assert_close(ours.negatives()[0], negative)
    torch.testing.assert_close(ours.negatives()[1], negative_mask)
    assert ours.embeds.shape == (2, 8, 32) and 0 < int(ours.mask[1].sum()) < 8  # padded to the max length


def test_cli_sample_with_embeddings_and_with_a_text_encoder(tmp_path, tiny_t5, pixart_prompts, capsys):
    from ditcache.cli import main

    pixart_prompts.save(tmp_path / "e.safetensors")
    base = ["sample", "--model", "pixart-tiny", "--random-weights", "--steps", "3", "--quiet"]
    assert main([*base, "--embeddings", str(tmp_path / "e.safetensors"), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "2 images" in out and "dpm++" in out and "guidance 4.5" in out  # the model's defaults
    assert main([*base, "--text-encoder", str(tiny_t5), "--prompt", "a fox", "a cat", "a dog",
                 "--out", str(tmp_path / "b")]) == 0
    assert torch.load(tmp_path / "b" / "latents.pt").shape == (3, 4, 8, 8)
    assert main([*base, "--classes", "1", "--out", str(tmp_path / "c")]) == 2
    assert "text-conditioned" in capsys.readouterr().err
    assert main(["sample", "--model", "dit-tiny", "--random-weights", "--steps", "2", "--quiet", "--embeddings",
                 str(tmp_path / "e.safetensors"), "--out", str(tmp_path / "d")]) == 2
    assert "class-conditional" in capsys.readouterr().err
