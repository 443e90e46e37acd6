"""Named model sizes: the DiT paper's /2 models, PixArt-α, U-Nets, the shipped reference models, tiny test sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .unet_sizes import (SD15_UNET, SD_SCHEDULER_CONFIG, UNET_FMNIST, UNET_TINY, CLIP_TOKENS, attention_layers,
                         downsample_factor)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# DDPM noise schedule every DiT was trained with (linear betas, 1000 steps). DiT's own sampler never clips the
# predicted x0 (sample.py: clip_denoised=False), and neither does facebook/DiT-XL-2-256's scheduler config;
# diffusers' DDIM/DDPM default would clip it to [-1, 1] (for dit-fmnist that dimmed samples: std 0.66 vs 0.71 real).
DIT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
}


@dataclass(frozen=True)
class ModelSpec:
    """A named model size.

    Args:
        name: registry name (``dit-xl``).
        family: decomposition family (``dit``).
        config: keyword arguments of the diffusers model class.
        latent: True when the model denoises VAE latents (images need a VAE to decode).
        description: one line for ``--help`` and tables.
        hf_repo: Hugging Face repo id whose *local* cache may hold the weights (never downloaded).
        bundled: folder under graphs/weights/ holding weights shipped with ditcache.
        class_names: human names of the classes, where known.
        scheduler_config: the noise schedule the model was trained with (diffusers scheduler config).
        conditioning_inputs: denoiser inputs besides ``x`` and ``timestep`` (``class_labels``, or text
            conditioning such as ``encoder_hidden_states``, ``encoder_attention_mask``).
        text_length: tokens of the (padded) text-encoder output that graphs are built for; text models only.
        sampler: default sampler short name (``ddim``, ``dpm++``, ``lcm``, ...).
        guidance_scale: default classifier-free guidance scale (<= 1: none).
    """

    name: str
    family: str
    config: Mapping[str, Any]
    latent: bool
    description: str
    hf_repo: str | None = None
    bundled: str | None = None
    class_names: tuple[str, ...] = ()
    scheduler_config: Mapping[str, Any] = field(default_factory=lambda: dict(DIT_SCHEDULER_CONFIG))
    conditioning_inputs: tuple[str, ...] = ("class_labels",)
    text_length: int | None = None
    sampler: str = "ddim"
    guidance_scale: float = 4.0

    @property
    def num_blocks(self) -> int:
        if self.family == "unet":
            return attention_layers(self.config)  # U-Nets cache their attention layers
        return int(self.config["num_layers"])

    @property
    def text_conditioned(self) -> bool:
        """True when the denoiser takes text-encoder embeddings (``encoder_hidden_states``) instead of classes."""
        return "encoder_hidden_states" in self.conditioning_inputs

    @property
    def num_classes(self) -> int:
        if self.family == "unet":  # num_class_embeds counts the null class
            return max(int(self.config.get("num_class_embeds") or 0) - 1, 0)
        return int(self.config["num_embeds_ada_norm"])

    @property
    def null_class(self) -> int:
        """Label of the classifier-free-guidance null class (diffusers appends it after the real ones)."""
        return self.num_classes

    @property
    def hidden_size(self) -> int:
        return int(self.config["num_attention_heads"]) * int(self.config["attention_head_dim"])

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.config.get("out_channels") or self.config["in_channels"])

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def sample_size(self) -> int:
        return int(self.config["sample_size"])

    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])

    @property
    def image_size(self) -> int:
        """Pixel resolution of generated images (latent models: 8× the latent size)."""
        return self.sample_size * (8 if self.latent else 1)

    @property
    def bundled_path(self) -> Path | None:
        return WEIGHTS_DIR / self.bundled if self.bundled else None


def _dit(layers: int, hidden: int, heads: int, sample_size: int, **extra: Any) -> dict[str, Any]:
    """diffusers DiTTransformer2DModel kwargs of a DiT/2 size."""
    config: dict[str, Any] = {
        "num_attention_heads": heads,
        "attention_head_dim": hidden // heads,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma, as every official DiT
        "num_layers": layers,
        "sample_size": sample_size,
        "patch_size": 2,
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "norm_elementwise_affine": False,
    }
    config.update(extra)
    return config


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("dit-xl", "dit", _dit(28, 1152, 16, 32), True,
                  "DiT-XL/2 256x256 (675M params)", hf_repo="facebook/DiT-XL-2-256"),
        ModelSpec("dit-xl-512", "dit", _dit(28, 1152, 16, 64), True,
                  "DiT-XL/2 512x512 (675M params)", hf_repo="facebook/DiT-XL-2-512"),
        ModelSpec("dit-l", "dit", _dit(24, 1024, 16, 32), True, "DiT-L/2 256x256 (458M params)"),
        ModelSpec("dit-b", "dit", _dit(12, 768, 12, 32), True, "DiT-B/2 256x256 (130M params)"),
        ModelSpec("dit-s", "dit", _dit(12, 384, 6, 32), True, "DiT-S/2 256x256 (33M params)"),
        ModelSpec("dit-tiny", "dit", _dit(4, 32, 2, 8), True,
                  "tiny DiT for tests (4 blocks, width 32, 1000 classes)"),
        ModelSpec(
            "dit-fmnist", "dit",
            _dit(12, 128, 4, 28, in_channels=1, out_channels=1, patch_size=4, num_embeds_ada_norm=10),
            False,
            "reference DiT trained on Fashion-MNIST 28x28 (12 blocks, width 128), shipped",
            bundled="dit-fmnist",
            class_names=FASHION_MNIST_CLASSES,
        ),
    )
}


# PixArt-α samples with DPM-Solver++ (diffusers' DPMSolverMultistepScheduler defaults: order 2, linear betas
# 1e-4..0.02 over 1000 steps, the DDPM schedule it was trained with), as PixArtAlphaPipeline's scheduler config.
PIXART_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}
# PixArt-α-LCM: LCMScheduler on the same linear betas, as PixArt's scripts/inference_lcm.py builds it (epsilon,
# 50 original steps, boundary scalings at t/0.1 = diffusers' timestep_scaling 10), x0 not clipped (diffusers'
# default). The Hub folder's scheduler_config.json could not be read offline; tests/graphs/test_pixart.py pins
# these values.
PIXART_LCM_SCHEDULER_CONFIG: dict[str, Any] = {**PIXART_SCHEDULER_CONFIG, "clip_sample": False}
PIXART_TEXT_LENGTH = 120  # T5 tokens, padded to max length (PixArtAlphaPipeline's max_sequence_length)
PIXART_TEXT_INPUTS = ("encoder_hidden_states", "encoder_attention_mask")
PIXART_SIZE_INPUTS = ("resolution", "aspect_ratio")  # micro-conditions of the 1024-MS models


def _pixart(sample_size: int, interpolation_scale: float, additional: bool, layers: int = 28, heads: int = 16,
            head_dim: int = 72, caption_channels: int = 4096) -> dict[str, Any]:
    """diffusers PixArtTransformer2DModel kwargs (PixArt-alpha/PixArt-XL-2-* transformer configs).

    ``interpolation_scale`` is PixArt's pe_interpolation (256: 0.5, 512: 1, 1024: 2), written into the Hub
    configs because diffusers' default (``max(sample_size // 64, 1)``) is wrong for 256 px.
    """
    return {
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 4,
        "out_channels": 8,  # learned sigma
        "num_layers": layers,
        "cross_attention_dim": heads * head_dim,
        "attention_bias": True,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": caption_channels,
        "interpolation_scale": interpolation_scale,
        "use_additional_conditions": additional,
    }


def _pixart_spec(name: str, config: dict[str, Any], description: str, hf_repo: str | None = None, lcm: bool = False,
                 text_length: int = PIXART_TEXT_LENGTH) -> ModelSpec:
    inputs = PIXART_TEXT_INPUTS + (PIXART_SIZE_INPUTS if config["use_additional_conditions"] else ())
    return ModelSpec(
        name, "pixart", config, True, description, hf_repo=hf_repo,
        scheduler_config=dict(PIXART_LCM_SCHEDULER_CONFIG if lcm else PIXART_SCHEDULER_CONFIG),
        conditioning_inputs=inputs, text_length=text_length,
        sampler="lcm" if lcm else "dpm++", guidance_scale=0.0 if lcm else 4.5,
    )


PIXART_MODELS = (
    _pixart_spec("pixart-256", _pixart(32, 0.5, False), "PixArt-α XL/2 256x256 (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-256x256"),
    _pixart_spec("pixart-512", _pixart(64, 1, False), "PixArt-α XL/2 512x512 (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-512x512"),
    _pixart_spec("pixart-1024", _pixart(128, 2, True), "PixArt-α XL/2 1024x1024 multi-scale (611M params, T5 text)",
                 hf_repo="PixArt-alpha/PixArt-XL-2-1024-MS"),
    _pixart_spec("pixart-lcm-1024", _pixart(128, 2, True),
                 "PixArt-α-LCM XL/2 1024x1024 (4-step LCM distillation, no guidance)",
                 hf_repo="PixArt-alpha/PixArt-LCM-XL-2-1024-MS", lcm=True),
    _pixart_spec("pixart-tiny", _pixart(8, 1, False, layers=4, heads=2, head_dim=24, caption_channels=32),
                 "tiny PixArt-α for tests (4 blocks, width 48, 32-dim captions, 8 text tokens)", text_length=8),
    _pixart_spec("pixart-tiny-ms", _pixart(8, 1, True, layers=4, heads=2, head_dim=24, caption_channels=32),
                 "tiny PixArt-α for tests with the 1024-MS micro-conditions (resolution, aspect ratio)", text_length=8),
)
MODELS.update({spec.name: spec for spec in PIXART_MODELS})

# U-Nets (diffusers UNet2DConditionModel, graphs/unet.py): the block-caching paper's own kind of model
UNET_MODELS = (
    ModelSpec("sd15-unet", "unet", SD15_UNET, True,
              "Stable Diffusion 1.5 U-Net 512x512 (860M params, CLIP text (B, 77, 768), 16 attention layers)",
              hf_repo="stable-diffusion-v1-5/stable-diffusion-v1-5", scheduler_config=dict(SD_SCHEDULER_CONFIG),
              conditioning_inputs=("encoder_hidden_states",), text_length=CLIP_TOKENS, guidance_scale=7.5),
    ModelSpec("unet-tiny", "unet", UNET_TINY, True,
              "tiny SD-style U-Net for tests (2 levels, 4 attention layers, 24-dim text)",
              scheduler_config=dict(SD_SCHEDULER_CONFIG), conditioning_inputs=("encoder_hidden_states",),
              text_length=CLIP_TOKENS, guidance_scale=7.5),
    ModelSpec("unet-fmnist", "unet", UNET_FMNIST, False,
              "reference class-conditional U-Net trained on Fashion-MNIST 28x28 (6 attention layers), shipped",
              bundled="unet-fmnist", class_names=FASHION_MNIST_CLASSES),
)
MODELS.update({spec.name: spec for spec in UNET_MODELS})


def at_resolution(spec: ModelSpec, resolution: int | None) -> ModelSpec:
    """``spec`` generating ``resolution``-pixel images (the sin-cos position table follows; weights do not change)."""
    if resolution is None or resolution == spec.image_size:
        return spec
    factor = 8 if spec.latent else 1
    patch = (downsample_factor(spec.config) if spec.family == "unet" else spec.patch_size) * factor
    if resolution <= 0 or resolution % patch:
        raise ValueError(f"--resolution must be a positive multiple of {patch} for {spec.name} (got {resolution})")
    from dataclasses import replace

    return replace(spec, config={**spec.config, "sample_size": resolution // factor})


def spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The registered spec whose architecture equals a diffusers config, else an ad-hoc ``custom`` spec."""
    keys = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
            "sample_size", "patch_size", "num_embeds_ada_norm")
    if config.get("norm_type") == "ada_norm_single":  # PixArtTransformer2DModel
        return _pixart_spec_for_config(config)
    if "down_block_types" in config:  # UNet2DConditionModel
        return _unet_spec_for_config(config, latent)
    for spec in MODELS.values():
        if spec.family == "dit" and all(spec.config.get(k) == config.get(k) for k in keys):
            return spec
    return ModelSpec("custom", "dit", {k: config[k] for k in keys if k in config}, latent,
                     "model given by the user")


def _pixart_spec_for_config(config: Mapping[str, Any]) -> ModelSpec:
    """The PixArt spec of a PixArtTransformer2DModel config (a registered one where the architecture matches)."""
    keys = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
            "sample_size", "patch_size", "caption_channels", "interpolation_scale")
    ours = {k: v for k, v in config.items() if not k.startswith("_")}
    if ours.get("use_additional_conditions") is None:  # diffusers decides from the size
        ours["use_additional_conditions"] = ours.get("sample_size") == 128
    if ours.get("interpolation_scale") is None:
        ours["interpolation_scale"] = max(int(ours.get("sample_size", 128)) // 64, 1)
    for spec in MODELS.values():
        if spec.family == "pixart" and not spec.sampler == "lcm" and all(
                spec.config.get(k) == ours.get(k) for k in (*keys, "use_additional_conditions")):
            return spec
    return _pixart_spec("custom", ours, "PixArt model given by the user")


def _unet_spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The U-Net spec of a UNet2DConditionModel config: a registered one where the architecture matches, else
    ``custom`` (text-conditioned unless it has class embeddings)."""
    ours = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if not k.startswith("_")}
    keys = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
            "layers_per_block", "cross_attention_dim", "sample_size", "num_class_embeds")
    for spec in MODELS.values():
        if spec.family == "unet" and all(spec.config.get(k) == ours.get(k) for k in keys):
            return spec
    classes = bool(ours.get("num_class_embeds"))
    return ModelSpec("custom", "unet", ours, latent, "U-Net given by the user",
                     scheduler_config=dict(DIT_SCHEDULER_CONFIG if classes else SD_SCHEDULER_CONFIG),
                     conditioning_inputs=("class_labels",) if classes else ("encoder_hidden_states",),
                     text_length=None if classes else CLIP_TOKENS, guidance_scale=4.0 if classes else 7.5)


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``, or a ValueError listing the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
