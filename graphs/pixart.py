"""PixArt-α (diffusers PixArtTransformer2DModel) cut into head / blocks[i:j] / tail as pure functions.

Unlike DiT, PixArt embeds its conditioning once (adaLN-single): the head computes the patch tokens, the
timestep embedding (with the 1024-MS micro-conditions), the projected caption tokens and the cross-attention
bias, and hands them to every block segment and the tail as named values.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .registry import PIXART_SIZE_INPUTS, PIXART_TEXT_INPUTS, ModelSpec
from .segments import PatchTokenParts, Segment, block_name

# values the head computes for the blocks and the tail (besides the hidden state "h")
TEMB = "temb"  # (B, 6D): adaLN-single modulation input of every block
EMBEDDED_TIMESTEP = "embedded_timestep"  # (B, D): the tail's modulation input
CONTEXT = "context"  # (B, L, D): projected caption tokens (cross-attention keys and values)
ENCODER_BIAS = "encoder_bias"  # (B, 1, L): 0 for kept tokens, -10000 for padding

MASK_BIAS = -10000.0  # diffusers' mask -> bias conversion


def uses_additional_conditions(config: Mapping) -> bool:
    """Whether a PixArtTransformer2DModel config takes resolution / aspect-ratio micro-conditions (as diffusers
    decides when the config leaves it open: sample size 128, i.e. the 1024-MS models)."""
    value = config.get("use_additional_conditions")
    return bool(config.get("sample_size") == 128 if value is None else value)


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) keep-mask (1 keep, 0 drop) -> (B, 1, L) additive attention bias, exactly as diffusers converts it."""
    bias = (1 - mask.to(dtype)) * MASK_BIAS  # (B, L)
    return bias.unsqueeze(1)  # (B, 1, L)


class PixArtHead(nn.Module):
    """Patch embedding, adaLN-single timestep embedding, caption projection and the cross-attention bias."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pos_embed = model.pos_embed
        self.adaln_single = model.adaln_single
        self.caption_projection = model.caption_projection
        self.additional = bool(model.use_additional_conditions)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor, *size: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = x.shape[0]
        bias = mask_to_bias(encoder_attention_mask, x.dtype)  # (B, 1, L)
        h = self.pos_embed(x)  # (B, C, H, W) -> (B, T, D)
        added = {"resolution": size[0], "aspect_ratio": size[1]} if self.additional else None  # (B, 2), (B, 1)
        temb, embedded = self.adaln_single(timestep, added, batch_size=batch, hidden_dtype=h.dtype)  # (B, 6D), (B, D)
        context = encoder_hidden_states
        if self.caption_projection is not None:
            context = self.caption_projection(context)  # (B, L, C_text) -> (B, L, D)
            context = context.view(batch, -1, h.shape[-1])  # (B, L, D)
        return h, temb, embedded, context, bias


class PixArtBlocks(nn.Module):
    """Blocks [start, end): self-attention, cross-attention to the caption tokens, MLP; adaLN-single modulated."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.transformer_blocks[start:end])

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                encoder_bias: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, attention_mask=None, encoder_hidden_states=context, encoder_attention_mask=encoder_bias,
                      timestep=temb, class_labels=None)  # (B, T, D)
        return h


class PixArtTail(nn.Module):
    """Final norm with the shared scale/shift table, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.norm_out = model.norm_out
        self.scale_shift_table = model.scale_shift_table
        self.proj_out = model.proj_out
        self.patch = int(model.config.patch_size)
        self.out_channels = int(model.out_channels)
        self.grid = int(model.config.sample_size) // self.patch  # static: no shape arithmetic at run time

    def forward(self, h: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)  # 2 x (B, 1, D)
        h = self.norm_out(h) * (1 + scale) + shift  # (B, T, D)
        h = self.proj_out(h)  # (B, T, p*p*C)
        batch = h.shape[0]
        grid, p, c = self.grid, self.patch, self.out_channels
        h = h.reshape(batch, grid, grid, p, p, c)  # (B, h, w, p, q, C)
        h = torch.einsum("nhwpqc->nchpwq", h)  # (B, C, h, p, w, q)
        return h.reshape(batch, c, grid * p, grid * p)  # (B, C, H, W)


class PixArtParts(PatchTokenParts):
    """The PixArt decomposition: ``tail(blocks[0:Nb](head(x, t, text...)), ...) == model(x, ...)``.

    Inputs: ``x`` (B, 4, H, W), ``timestep`` (B,), ``encoder_hidden_states`` (B, L, C_text) T5 embeddings,
    ``encoder_attention_mask`` (B, L) 1 = token, 0 = padding, and for the 1024-MS models ``resolution``
    (B, 2) = (height, width) in pixels and ``aspect_ratio`` (B, 1) = height / width.
    """

    hidden_name = "h"
    output_name = "out"

    def __init__(self, model: nn.Module, spec: ModelSpec):
        if spec.text_length is None:
            raise ValueError(f"{spec.name}: a PixArt spec needs text_length (the padded T5 token count)")
        self.model = model
        self.spec = spec
        self.num_blocks = len(model.transformer_blocks)
        self.additional = bool(model.use_additional_conditions)
        size = PIXART_SIZE_INPUTS if self.additional else ()
        self.input_names = ("x", "timestep", *PIXART_TEXT_INPUTS, *size)
        if tuple(spec.conditioning_inputs) != self.input_names[2:]:
            raise ValueError(f"{spec.name} declares conditioning inputs {spec.conditioning_inputs} but the model "
                             f"takes {self.input_names[2:]} (use_additional_conditions="
                             f"{model.use_additional_conditions}); choose the --model these weights belong to")
        self.cond_names = self.input_names[1:]
        self._head = Segment("head", PixArtHead(model), self.input_names,
                             ("h", TEMB, EMBEDDED_TIMESTEP, CONTEXT, ENCODER_BIAS))
        self._tail = Segment("tail", PixArtTail(model), ("h", EMBEDDED_TIMESTEP), ("out",))

    def head(self) -> Segment:
        return self._head

    def blocks(self, start: int, end: int) -> Segment:
        if not 0 <= start < end <= self.num_blocks:
            raise ValueError(f"block range [{start}, {end}) is outside [0, {self.num_blocks})")
        return Segment(block_name(start, end), PixArtBlocks(self.model, start, end),
                       ("h", TEMB, CONTEXT, ENCODER_BIAS), ("h",), start, end)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling); every mask keeps at least its
        first token and pads a random tail, as a tokenizer padding to max length does."""
        size, length = self.spec.sample_size, int(self.spec.text_length)
        channels = int(self.spec.config["caption_channels"])
        kept = torch.randint(1, length + 1, (batch, 1), generator=generator)  # (B, 1) real tokens per prompt
        inputs = {
            "x": torch.randn(batch, self.spec.in_channels, size, size, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
            "encoder_hidden_states": torch.randn(batch, length, channels, generator=generator),
            "encoder_attention_mask": (torch.arange(length)[None] < kept).long(),  # (B, L)
        }
        if self.additional:
            pixels = float(self.spec.image_size)
            inputs["resolution"] = torch.full((batch, 2), pixels)  # (B, 2) height, width
            inputs["aspect_ratio"] = torch.ones(batch, 1)  # (B, 1)
        return inputs
