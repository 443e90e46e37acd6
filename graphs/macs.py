"""Analytic multiply-accumulate counts of the DiT segments (matmuls, convolutions and attention)."""

from __future__ import annotations

from dataclasses import dataclass

from .registry import ModelSpec

TIME_FREQ_DIM = 256  # sinusoidal timestep features fed to the timestep MLP


@dataclass(frozen=True)
class SegmentCosts:
    """MACs of one denoiser call, split by segment, for a given batch.

    Args:
        head: patch embedding.
        blocks: one entry per block.
        tail: final modulation and projection.
    """

    head: int
    blocks: tuple[int, ...]
    tail: int

    @property
    def full(self) -> int:
        return self.head + sum(self.blocks) + self.tail

    def blocks_range(self, start: int, end: int) -> int:
        return sum(self.blocks[start:end])


def dit_costs(spec: ModelSpec, batch: int = 1) -> SegmentCosts:
    """Analytic MACs of a DiT forward on ``batch`` samples (elementwise ops and norms not counted)."""
    d = spec.hidden_size
    p = spec.patch_size
    tokens = (spec.sample_size // p) ** 2
    embedding = TIME_FREQ_DIM * d + d * d  # timestep MLP: 256 -> D -> D (label lookup is free)
    head = tokens * (p * p * spec.in_channels) * d  # patchify conv
    block = (
        embedding
        + d * 6 * d  # adaLN-zero modulation
        + 4 * tokens * d * d  # q, k, v, out projections
        + 2 * tokens * tokens * d  # scores and weighted sum
        + 8 * tokens * d * d  # MLP D -> 4D -> D
    )
    tail = embedding + d * 2 * d + tokens * d * (p * p * spec.out_channels)
    return SegmentCosts(head * batch, tuple(block * batch for _ in range(spec.num_blocks)), tail * batch)
