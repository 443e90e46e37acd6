"""What a denoiser is conditioned on, and how classifier-free guidance pairs it with its unconditional twin.

One sampling loop serves every model: it asks a :class:`Conditioning` for the conditioning inputs of the
batch the denoiser sees, and for how to combine the two halves of a guided output. Class labels (DiT:
the null class, conditional half first, as DiTPipeline) and text embeddings (any model whose inputs include
``encoder_hidden_states``: the negative prompt, unconditional half first, as PixArtAlphaPipeline and
StableDiffusionPipeline) are the two kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.runtime.prompts import PromptEmbeddings


class Conditioning(Protocol):
    """Conditioning of one sampling call."""

    num_images: int

    def inputs(self, cfg: bool, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Conditioning inputs of the denoiser batch (both halves under guidance)."""

    def guide(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        """Guided output ``uncond + scale * (cond - uncond)`` from the denoiser's (2N, ...) output."""


@dataclass(frozen=True)
class ClassConditioning:
    """Class labels; the unconditional half uses the null class and comes second."""

    labels: tuple[int, ...]
    null_class: int

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def inputs(self, cfg: bool, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
        labels = torch.tensor(self.labels, device=device)  # (N,)
        if cfg:
            labels = torch.cat([labels, torch.full_like(labels, self.null_class)])  # (2N,)
        return {"class_labels": labels}

    def guide(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)


@dataclass(frozen=True, eq=False)
class TextConditioning:
    """Prompt embeddings; the unconditional half (negative prompt) comes first.

    Args:
        prompts: embeddings of one prompt per image and of the negative prompt.
        names: the model's conditioning inputs to fill: ``encoder_hidden_states`` (N, L, C),
            ``encoder_attention_mask`` (N, L), and PixArt's micro-conditions ``resolution`` (N, 2) and
            ``aspect_ratio`` (N, 1), which describe the generated image (``image_size`` pixels square).
        image_size: pixels per side of the generated images.
    """

    prompts: PromptEmbeddings
    names: tuple[str, ...]
    image_size: int

    @property
    def num_images(self) -> int:
        return self.prompts.num_images

    def _half(self, embeds: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor | None) -> dict[str, torch.Tensor]:
        n, size = embeds.shape[0], float(self.image_size)
        values = {
            "encoder_hidden_states": embeds,  # (N, L, C)
            "encoder_attention_mask": mask,  # (N, L)
            "resolution": torch.tensor([[size, size]]).expand(n, 2),  # (N, 2) height, width
            "aspect_ratio": torch.ones(n, 1),  # (N, 1) height / width
        }
        if pooled is not None:
            values["pooled_projections"] = pooled  # (N, P): FLUX / SD3
        unknown = [name for name in self.names if name not in values]
        if unknown:
            raise ValueError(f"text conditioning has no value for the model input {unknown[0]!r}")
        return {name: values[name] for name in self.names}

    def inputs(self, cfg: bool, dtype: torch.dtype, device: torch.device | str) -> dict[str, torch.Tensor]:
        pooled = "pooled_projections" in self.names
        cond = self._half(self.prompts.embeds, self.prompts.mask, self.prompts.pooled if pooled else None)
        if cfg:
            uncond = self._half(*self.prompts.negatives(), self.prompts.negative_pooling() if pooled else None)
            cond = {k: torch.cat([uncond[k], cond[k]]) for k in cond}  # (2N, ...): unconditional first
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in cond.items()}

    def guide(self, out: torch.Tensor, scale: float) -> torch.Tensor:
        uncond, cond = out.chunk(2)
        return uncond + scale * (cond - uncond)


# inputs the sampling loop sets itself, not the conditioning (FLUX.1-dev's embedded guidance scale)
SAMPLER_INPUTS = ("guidance",)


def text_channels(spec: ModelSpec) -> int | None:
    """Channels the model expects in ``encoder_hidden_states`` (PixArt: caption_channels; U-Nets: the
    cross-attention width; FLUX / SD3: joint_attention_dim; Wan: text_dim)."""
    config = spec.config
    value = (config.get("caption_channels") or config.get("cross_attention_dim") or config.get("joint_attention_dim")
             or config.get("text_dim"))
    return None if value is None else int(value)


def pooled_channels(spec: ModelSpec) -> int | None:
    """Width of the pooled text embedding the model takes (FLUX: 768, SD3: 2048), None when it takes none."""
    if "pooled_projections" not in spec.conditioning_inputs:
        return None
    return int(spec.config["pooled_projection_dim"])


def conditioning_for(spec: ModelSpec, class_labels: tuple[int, ...], prompts: PromptEmbeddings | None,
                     cfg: bool) -> Conditioning:
    """The conditioning of a request on ``spec``, checked: labels in range for class-conditional models;
    prompt embeddings of the right shape (and negatives under guidance) for text-conditioned ones."""
    if spec.text_conditioned:
        if prompts is None:
            raise ValueError(f"{spec.name} is text-conditioned: give prompt embeddings (--embeddings FILE, or "
                             f"--text-encoder DIR with --prompt TEXT)")
        if class_labels:
            raise ValueError(f"{spec.name} is text-conditioned and takes no class labels; give prompts instead")
        channels = text_channels(spec)
        if channels is not None and prompts.channels != channels:
            raise ValueError(f"the prompt embeddings have {prompts.channels} channels, {spec.name} takes {channels} "
                             f"(embeddings of another text encoder?)")
        if spec.text_length is not None and prompts.length != spec.text_length:
            raise ValueError(f"the prompt embeddings have {prompts.length} tokens, {spec.name} runs with "
                             f"{spec.text_length} (graphs have static shapes): pad or truncate the prompts to "
                             f"{spec.text_length} tokens, as the tokenizer does with padding='max_length'")
        if cfg:
            prompts.negatives()  # raises with the fix when there are none
        names = tuple(n for n in spec.conditioning_inputs if n not in SAMPLER_INPUTS)
        if "pooled_projections" in names:
            _check_pooled(spec, prompts, cfg)
        image_size = spec.image_size if "resolution" in names else 0  # only PixArt's micro-conditions read it
        return TextConditioning(prompts, names, image_size)
    if prompts is not None:
        raise ValueError(f"{spec.name} is class-conditional: give class labels, not prompt embeddings")
    if not class_labels:
        raise ValueError("give at least one class label")
    bad = [c for c in class_labels if not 0 <= c < spec.num_classes]
    if bad:
        raise ValueError(f"class {bad[0]} is outside {spec.name}'s classes 0..{spec.num_classes - 1}")
    return ClassConditioning(tuple(class_labels), spec.null_class)


def _check_pooled(spec: ModelSpec, prompts: PromptEmbeddings, cfg: bool) -> None:
    """Raise ValueError unless the prompts carry pooled embeddings of the width the model takes (FLUX, SD3)."""
    width = int(spec.config["pooled_projection_dim"])
    if prompts.pooled is None:
        raise ValueError(f"{spec.name} also takes pooled text embeddings: add pooled_prompt_embeds (N, {width}) to the "
                         f"embeddings file (FluxPipeline / StableDiffusion3Pipeline.encode_prompt return them)")
    if prompts.pooled.shape[1] != width:
        raise ValueError(f"the pooled embeddings have {prompts.pooled.shape[1]} channels, {spec.name} takes {width}")
    if cfg:
        prompts.negative_pooling()  # raises with the fix when there are none
