"""What the flow-matching families (Flux, SD3, Wan) share: their spec and how their stock pipelines sample.

A :class:`FlowModelSpec` is a :class:`ModelSpec` whose latents the diffusers config does not describe (Flux and
Wan configs carry no sample size, SD3's is the position table's training size): it names the latents the stock
pipeline draws (``latent_shape``) and how that pipeline drives its scheduler and denoiser (:class:`FlowSampling`).
The dynamic shift of the sigmas and the 2x2 packing of FLUX's latents live here too, for the sampling loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from .model_spec import ModelSpec

GUIDANCE_KINDS = ("cfg", "embedded", "none")


@dataclass(frozen=True)
class FlowSampling:
    """How a stock flow-matching pipeline drives its scheduler and its denoiser.

    Args:
        sigmas: ``linspace``: the pipeline hands ``set_timesteps`` the sigmas ``linspace(1, 1/n, n)``
            (FluxPipeline); ``scheduler``: ``set_timesteps(n)`` spaces them itself (SD3, Wan).
        timestep_divisor: the model's timestep input is the scheduler's timestep divided by this (Flux: 1000,
            and the model multiplies by 1000 again).
        guidance: ``cfg``: classifier-free guidance on a [negative; positive] batch (SD3; Wan's pipeline makes
            two calls, ditcache's loop batches them); ``embedded``: the guidance scale is a model input
            (FLUX.1-dev's guidance embedding, no second batch); ``none`` (FLUX.1-schnell).
        packed: the model reads the latents as 2x2-patch tokens (B, H/2 * W/2, 4C) (Flux).
    """

    sigmas: str = "scheduler"
    timestep_divisor: float = 1.0
    guidance: str = "cfg"
    packed: bool = False

    def __post_init__(self) -> None:
        if self.sigmas not in ("linspace", "scheduler"):
            raise ValueError(f"FlowSampling.sigmas must be 'linspace' or 'scheduler', got {self.sigmas!r}")
        if self.guidance not in GUIDANCE_KINDS:
            raise ValueError(f"FlowSampling.guidance must be one of {GUIDANCE_KINDS}, got {self.guidance!r}")


@dataclass(frozen=True)
class FlowModelSpec(ModelSpec):
    """A named size of a flow-matching family.

    Args:
        latent_shape: the latents the stock pipeline draws: (C, H, W) for images, (C, F, H, W) for video
            (before Flux's packing).
        flow: how the stock pipeline samples (see :class:`FlowSampling`).
    """

    latent_shape: tuple[int, ...] = ()
    flow: FlowSampling = field(default_factory=FlowSampling)

    def __post_init__(self) -> None:
        if len(self.latent_shape) not in (3, 4):
            raise ValueError(f"{self.name}: latent_shape must be (C, H, W) or (C, F, H, W), got {self.latent_shape}")

    def cfg_batch(self, guidance_scale: float) -> bool:
        """True only for ``cfg`` guidance above 1: FLUX.1-dev's embedded scale and -schnell's none keep the batch."""
        return self.flow.guidance == "cfg" and guidance_scale > 1

    @property
    def latent_channels(self) -> int:
        return int(self.latent_shape[0])

    @property
    def sample_size(self) -> int:
        """Latent side of square images (non-square latents: read ``latent_shape``)."""
        height, width = self.latent_shape[-2:]
        if height != width:
            raise ValueError(f"{self.name} has non-square latents {self.latent_shape[-2:]}: read latent_shape")
        return int(height)

    @property
    def image_size(self) -> int:
        return self.sample_size * 8

    @property
    def pooled_channels(self) -> int | None:
        """Width of the pooled text embedding the model takes (Flux: CLIP's 768, SD3: 2048), None if none."""
        if "pooled_projections" not in self.conditioning_inputs:
            return None
        return int(self.config["pooled_projection_dim"])


def resize_latents(spec: ModelSpec, side: int | None, latent_frames: int | None = None) -> FlowModelSpec:
    """A flow spec drawing ``side`` x ``side`` latents (None: as they are) and, for video, ``latent_frames`` latent
    frames: the family records' ``resize`` (their checks first); the head's position tables follow the shape."""
    if not isinstance(spec, FlowModelSpec):
        raise TypeError(f"{spec.name} is not a flow-matching spec")
    shape = list(spec.latent_shape)
    if side is not None:
        shape[-2:] = [side, side]
    if latent_frames is not None:
        if len(shape) != 4:
            raise ValueError(f"{spec.name} generates images and has no frame count; drop the frame count")
        if latent_frames < 1:
            raise ValueError(f"{spec.name}: at least one latent frame, got {latent_frames}")
        shape[1] = latent_frames
    return spec if tuple(shape) == tuple(spec.latent_shape) else replace(spec, latent_shape=tuple(shape))


def unpacked_call_spec(spec: ModelSpec, call: Mapping[str, Any]) -> FlowModelSpec:
    """The spec of one SD3 / Wan pipeline call: latents (B, C, H, W) or (B, C, F, H, W) as they come, the text
    length the prompts were padded to."""
    latent = tuple(int(s) for s in call["hidden_states"].shape[1:])
    states = call.get("encoder_hidden_states")
    length = spec.text_length if states is None else int(states.shape[1])
    if latent == tuple(spec.latent_shape) and length == spec.text_length:
        return spec
    return replace(spec, latent_shape=latent, text_length=length)


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """The dynamic shift ``mu`` of resolution-dependent timestep shifting: linear in the image token count from
    ``base_shift`` at ``base_seq_len`` to ``max_shift`` at ``max_seq_len`` (Python floats, i.e. float64, in the
    order diffusers' pipelines evaluate it, so the sigmas agree to the last bit)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


def dynamic_shift(scheduler_config: Mapping[str, Any], image_seq_len: int) -> float | None:
    """``mu`` for a scheduler with ``use_dynamic_shifting`` (None without), from its config's bounds."""
    if not scheduler_config.get("use_dynamic_shifting"):
        return None
    return calculate_shift(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                           scheduler_config.get("max_image_seq_len", 4096), scheduler_config.get("base_shift", 0.5),
                           scheduler_config.get("max_shift", 1.15))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) latents -> (B, H/2 * W/2, 4C) tokens of 2x2 patches, row-major, channels (c, dy, dx)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)  # (B, C, h, 2, w, 2)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 2, 2)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: (B, H/2 * W/2, 4C) -> (B, C, H, W)."""
    batch, _, packed = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, packed // 4, 2, 2)  # (B, h, w, C, 2, 2)
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, 2, w, 2)
    return patches.reshape(batch, packed // 4, height, width)
