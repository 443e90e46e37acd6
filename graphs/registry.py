"""Named model sizes: the DiT paper's /2 models, the shipped reference model and tiny test sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# DDPM noise schedule every DiT was trained with (linear betas, 1000 steps).
DIT_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
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

    @property
    def num_blocks(self) -> int:
        return int(self.config["num_layers"])

    @property
    def num_classes(self) -> int:
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


def at_resolution(spec: ModelSpec, resolution: int | None) -> ModelSpec:
    """``spec`` generating ``resolution``-pixel images (the sin-cos position table follows; weights do not change)."""
    if resolution is None or resolution == spec.image_size:
        return spec
    factor = 8 if spec.latent else 1
    patch = spec.patch_size * factor
    if resolution <= 0 or resolution % patch:
        raise ValueError(f"--resolution must be a positive multiple of {patch} for {spec.name} (got {resolution})")
    from dataclasses import replace

    return replace(spec, config={**spec.config, "sample_size": resolution // factor})


def spec_for_config(config: Mapping[str, Any], latent: bool = True) -> ModelSpec:
    """The registered spec whose architecture equals a diffusers config, else an ad-hoc ``custom`` spec."""
    keys = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
            "sample_size", "patch_size", "num_embeds_ada_norm")
    for spec in MODELS.values():
        if all(spec.config.get(k) == config.get(k) for k in keys):
            return spec
    return ModelSpec("custom", "dit", {k: config[k] for k in keys if k in config}, latent,
                     "model given by the user")


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``, or a ValueError listing the choices."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
