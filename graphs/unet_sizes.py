"""U-Net sizes: diffusers ``UNet2DConditionModel`` configurations and what ditcache reads from them.

One model class for every U-Net (Stable Diffusion 1.5, the tiny test size and the Fashion-MNIST reference
model) keeps one decomposition (graphs/unet.py): the class-conditional Fashion-MNIST model is a
``UNet2DConditionModel`` with ``num_class_embeds`` and self-attention blocks instead of a ``UNet2DModel``,
whose forward (time embedding, class embedding, skip handling) differs.
"""

from __future__ import annotations

from typing import Any, Mapping

from .model_spec import FASHION_MNIST_CLASSES, ModelSpec

CLIP_TOKENS = 77  # CLIP text encoder sequence length: SD 1.5's encoder_hidden_states are (B, 77, 768)

# Stable Diffusion 1.5's noise schedule (its scheduler_config.json), for DDIM / DPM-Solver++ / Euler / DDPM
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}

ATTENTION_BLOCKS = {  # block types with one attention layer per resnet (the caching units)
    "CrossAttnDownBlock2D", "AttnDownBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D",
}
MID_ATTENTION_BLOCKS = {"UNetMidBlock2DCrossAttn"}  # UNet2DConditionModel builds "UNetMidBlock2D" without attention

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

UNET_TINY: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 24,
    "norm_num_groups": 8,
}

# 28x28x1 pixels: levels 28 -> 14 -> 7 (the overall down-sampling 4 divides 28: no padding needed);
# self-attention at 14x14 and 7x7 (6 attention layers: 2 down, 4 up; UNet2DConditionModel's "UNetMidBlock2D" is
# a single resnet); 10 classes + the null class 10 for guidance; 2.4M parameters (9.2 MiB fp32).
UNET_FMNIST: dict[str, Any] = {
    "sample_size": 28,
    "in_channels": 1,
    "out_channels": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64, 128),
    "layers_per_block": 1,
    "attention_head_dim": 32,
    "norm_num_groups": 8,
    "num_class_embeds": 11,
}


def attention_layers(config: Mapping[str, Any]) -> int:
    """Attention layers of a U-Net config, in forward order: the caching units (ditcache's blocks)."""
    layers = int(config.get("layers_per_block", 2))
    down = sum(layers for t in config["down_block_types"] if t in ATTENTION_BLOCKS)
    mid = 1 if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") in MID_ATTENTION_BLOCKS else 0
    up = sum(layers + 1 for t in config["up_block_types"] if t in ATTENTION_BLOCKS)
    return down + mid + up


def downsample_factor(config: Mapping[str, Any]) -> int:
    """How much the U-Net shrinks its input: the sample size must be a multiple of it."""
    return 2 ** (len(config["block_out_channels"]) - 1)


# U-Nets (diffusers UNet2DConditionModel, graphs/unet.py): the block-caching paper's own kind of model
SAMPLER, GUIDANCE_SCALE = "ddim", 7.5  # Stable Diffusion's default guidance

UNET_MODELS = (
    ModelSpec("sd15-unet", "unet", SD15_UNET, True,
              "Stable Diffusion 1.5 U-Net 512x512 (860M params, CLIP text (B, 77, 768), 16 attention layers)",
              hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5", scheduler_config=dict(SD_SCHEDULER_CONFIG),
              conditioning_inputs=("encoder_hidden_states",), text_length=CLIP_TOKENS, sampler=SAMPLER,
              guidance_scale=GUIDANCE_SCALE),
    ModelSpec("unet-tiny", "unet", UNET_TINY, True,
              "tiny SD-style U-Net for tests (2 levels, 4 attention layers, 24-dim text)",
              scheduler_config=dict(SD_SCHEDULER_CONFIG), conditioning_inputs=("encoder_hidden_states",),
              text_length=CLIP_TOKENS, sampler=SAMPLER, guidance_scale=GUIDANCE_SCALE),
    ModelSpec("unet-fmnist", "unet", UNET_FMNIST, False,
              "reference class-conditional U-Net trained on Fashion-MNIST 28x28 (6 attention layers), shipped",
              bundled="unet-fmnist", class_names=FASHION_MNIST_CLASSES),
)
