"""``ditcache.apply(pipe, DeltaDiTConfig(...))``: a typed config runs exactly what its YAML mapping runs, and a
corrected BlockCacheConfig brings its scale/shift file along."""

from __future__ import annotations

import pytest
import torch

import ditcache


@pytest.fixture()
def pipe(tiny_model, tiny_spec):
    from diffusers import AutoencoderKL, DiTPipeline

    from ditcache.compiler.runtime.sampling import make_scheduler

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    pipe = DiTPipeline(transformer=tiny_model, vae=vae, scheduler=make_scheduler("ddim", tiny_spec.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, steps=6, seed=4):
    return pipe(class_labels=[1, 2], num_inference_steps=steps, generator=torch.manual_seed(seed),
                output_type="pt").images


def test_a_config_applies_as_its_mapping(pipe):
    stock = run(pipe)
    config = ditcache.DeltaDiTConfig(steps=6, boundary=3, interval=2, cached_blocks=2)
    with ditcache.apply(pipe, config) as handle:
        typed = run(pipe)
        assert handle.plan.num_steps == 6
    with ditcache.apply(pipe, config.to_mapping()):
        mapped = run(pipe)
    torch.testing.assert_close(typed, mapped, rtol=0, atol=0)
    assert (typed - stock).abs().max() > 1e-4
    with pytest.raises(TypeError, match="schedule must be"):
        ditcache.apply(pipe, 6)


def test_a_corrected_block_cache_config_loads_its_scale_shift(pipe, tmp_path):
    from safetensors.torch import save_file

    recompute = {1: [0, 3], 2: [0, 3]}
    plain = ditcache.BlockCacheConfig(steps=6, recompute=recompute)
    tensors = {}
    for b in recompute:
        tensors[f"scale.b{b}"] = torch.full((6, 32), 1.3)
        tensors[f"shift.b{b}"] = torch.full((6, 32), 0.05)
    save_file(tensors, str(tmp_path / "ss.safetensors"))
    corrected = ditcache.BlockCacheConfig(steps=6, recompute=recompute, scale_shift=tmp_path / "ss.safetensors")
    with ditcache.apply(pipe, plain):
        uncorrected = run(pipe)
    with ditcache.apply(pipe, corrected, granularity="segment") as handle:
        assert handle.plan.corrected and handle.plan.corrections == tmp_path / "ss.safetensors"
        out = run(pipe)
    assert (out - uncorrected).abs().max() > 1e-4
