"""Segments: the pieces a denoiser is cut into (head, block ranges, tail), each a pure nn.Module."""

from __future__ import annotations

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


class DenoiserParts(Protocol):
    """What a model family provides to ditcache: its decomposition and the shapes of its inputs."""

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
