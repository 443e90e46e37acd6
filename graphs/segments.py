"""Segments: the pieces a denoiser is cut into (head, block ranges, tail), each a pure nn.Module."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Segment:
    """One piece of the decomposed denoiser.

    Args:
        name: stable identifier (``head``, ``blocks.0-14``, ``tail``); artifact keys are built from it.
        module: the pure function, an nn.Module whose forward takes ``inputs`` positionally.
        inputs: names of the environment values it reads, in call order.
        outputs: names of the values it returns, in order (a single output is returned bare).
        start, end: block range for block segments, None for head and tail.
    """

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    start: int | None = None
    end: int | None = None

    def __call__(self, *args: torch.Tensor):
        return self.module(*args)


def check_block_range(start: int, end: int, num_blocks: int) -> None:
    """Raise ValueError unless [start, end) is a non-empty range of the ``num_blocks`` blocks."""
    if not 0 <= start < end <= num_blocks:
        raise ValueError(f"block range [{start}, {end}) is outside [0, {num_blocks})")


class PatchTail(nn.Module):
    """Base of the patch-token transformers' tails: the static patch geometry and unpatchify."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.patch = int(model.config.patch_size)
        self.out_channels = int(model.out_channels)
        self.grid = int(model.config.sample_size) // self.patch  # static: no shape arithmetic at run time

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) patch tokens -> (B, C, H, W), as DiT's unpatchify (T = grid², H = W = grid * p)."""
        batch = h.shape[0]
        grid, p, c = self.grid, self.patch, self.out_channels
        h = h.reshape(batch, grid, grid, p, p, c)  # (B, h, w, p, q, C)
        h = torch.einsum("nhwpqc->nchpwq", h)  # (B, C, h, p, w, q)
        return h.reshape(batch, c, grid * p, grid * p)  # (B, C, H, W)


class PatchTokenParts:
    """Head, block ranges, tail and shapes shared by the token-sequence transformers' parts (DiT, PixArt-α, FLUX.1,
    SD3, Wan 2.1; the flow families count their own ``tokens``).

    Subclasses set ``model``, ``spec``, ``num_blocks``, ``_head``, ``_tail``, ``block_inputs`` (the names a
    block segment reads besides the hidden state) and ``block_module`` (``block_module(model, start, end)``).
    """

    hidden_name = "h"
    output_name = "out"
    block_inputs: tuple[str, ...] = ()
    block_module: type[nn.Module]

    def head(self) -> Segment:
        return self._head

    def blocks(self, start: int, end: int) -> Segment:
        check_block_range(start, end, self.num_blocks)
        return Segment(block_name(start, end), self.block_module(self.model, start, end),
                       (self.hidden_name, *self.block_inputs), (self.hidden_name,), start, end)

    def tail(self) -> Segment:
        return self._tail

    @property
    def tokens(self) -> int:
        return (self.spec.sample_size // self.spec.patch_size) ** 2

    def hidden_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.spec.hidden_size)

    def channel_shape(self) -> tuple[int, ...]:
        """Shape of a per-channel scale/shift, broadcast against the hidden state."""
        return (self.spec.hidden_size,)


class DenoiserParts(Protocol):
    """What a model family provides to ditcache: its decomposition and the shapes of its inputs.

    Optional, for families whose blocks are not one chain of one hidden state (U-Nets): ``link(i)``, the
    segment that runs before block i on every step whatever is replayed (None where nothing does), and a
    ``block`` parameter of ``hidden_shape`` / ``channel_shape`` where the width changes from block to block
    (read them through :func:`hidden_shape_at` / :func:`channel_shape_at`), and ``block_modules()`` where the
    blocks are not the model's ``transformer_blocks`` (:func:`block_modules`), and ``streams()`` where the hidden
    state joins several token streams (FLUX, SD3: [text; image]): block caching's scale/shift then has a row per
    stream (graphs/streams.py). Segments may read and write other named values than the hidden state (skip features,
    embeddings), listed in their inputs and outputs.
    """

    num_blocks: int
    input_names: tuple[str, ...]
    hidden_name: str
    output_name: str

    def head(self) -> Segment:
        ...

    def blocks(self, start: int, end: int) -> Segment:
        ...

    def tail(self) -> Segment:
        ...

    def example_inputs(self, batch: int) -> dict[str, torch.Tensor]:
        ...

    def hidden_shape(self, batch: int) -> tuple[int, ...]:
        ...

    def channel_shape(self) -> tuple[int, ...]:
        ...


def block_name(start: int, end: int) -> str:
    """Canonical name of the segment running blocks [start, end)."""
    return f"blocks.{start}-{end}"


def link_name(position: int) -> str:
    """Canonical name of the segment that runs before block ``position`` on every step (U-Nets)."""
    return f"link.{position}"


def link_of(parts: DenoiserParts, position: int) -> Segment | None:
    """The segment running before block ``position`` whatever the step replays, if the family has one."""
    link = getattr(parts, "link", None)
    return link(position) if link is not None else None


def block_modules(parts: DenoiserParts) -> list:
    """The modules whose outputs are the blocks' outputs, in block order (calibration hooks them): the
    family's ``block_modules()`` (U-Nets: the attention layers), else the model's ``transformer_blocks``."""
    modules = getattr(parts, "block_modules", None)
    return list(modules()) if modules is not None else list(parts.model.transformer_blocks)


def _takes_block(method) -> bool:
    return "block" in inspect.signature(method).parameters


def hidden_shape_at(parts: DenoiserParts, batch: int, block: int) -> tuple[int, ...]:
    """Shape of the hidden state entering block ``block`` (families of constant width ignore the block)."""
    if _takes_block(parts.hidden_shape):
        return tuple(parts.hidden_shape(batch, block))
    return tuple(parts.hidden_shape(batch))


def channel_shape_at(parts: DenoiserParts, block: int) -> tuple[int, ...]:
    """Shape of block ``block``'s per-channel scale/shift, broadcast against its hidden state: (D,) for token
    sequences (B, T, D), (C, 1, 1) for feature maps (B, C, H, W)."""
    if _takes_block(parts.channel_shape):
        return tuple(parts.channel_shape(block))
    return tuple(parts.channel_shape())
