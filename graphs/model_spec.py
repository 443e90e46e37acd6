"""ModelSpec: one named model size (its diffusers config, conditioning, defaults); its family's record reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .family import Family

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

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class ModelSpec:
    """A named model size.

    Args:
        name: registry name (``dit-xl``).
        family: name of its family's record in graphs/family.py (``dit``): decomposition, costs, weights.
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
    def family_record(self) -> Family:
        """This spec's family record (ValueError naming the registered families when there is none)."""
        from .family import get_family

        return get_family(self.family)

    @property
    def num_blocks(self) -> int:
        """Cacheable blocks (U-Nets: attention layers)."""
        return self.family_record.num_blocks(self.config)

    @property
    def text_conditioned(self) -> bool:
        """True when the denoiser takes text-encoder embeddings (``encoder_hidden_states``) instead of classes."""
        return "encoder_hidden_states" in self.conditioning_inputs

    def cfg_batch(self, guidance_scale: float) -> bool:
        """True when sampling at ``guidance_scale`` runs the denoiser on a doubled [conditional; unconditional]
        batch (classifier-free guidance: scale > 1). Flow families override it with their guidance kind
        (FLUX.1-dev's scale is a model input, no second batch)."""
        return guidance_scale > 1

    @property
    def num_classes(self) -> int:
        return self.family_record.num_classes(self.config)

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
