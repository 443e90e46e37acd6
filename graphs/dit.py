"""DiT (diffusers DiTTransformer2DModel) cut into head / blocks[i:j] / tail as pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec
from .segments import PatchTokenParts, Segment, block_name


class DiTHead(nn.Module):
    """Patch embedding with the fixed sin-cos position table."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.pos_embed = model.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_embed(x)  # (B, C, H, W) -> (B, T, D)


class DiTBlocks(nn.Module):
    """Blocks [start, end); each block embeds (timestep, class) itself, as in diffusers."""

    def __init__(self, model: nn.Module, start: int, end: int):
        super().__init__()
        self.blocks = nn.ModuleList(model.transformer_blocks[start:end])

    def forward(self, h: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, timestep=timestep, class_labels=class_labels)  # (B, T, D)
        return h


class DiTTail(nn.Module):
    """Final adaLN, projection to patches, unpatchify."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.emb = model.transformer_blocks[0].norm1.emb  # diffusers conditions the tail on block 0's embedding
        self.norm_out = model.norm_out
        self.proj_out_1 = model.proj_out_1
        self.proj_out_2 = model.proj_out_2
        self.patch = int(model.config.patch_size)
        self.out_channels = int(model.out_channels)
        self.grid = int(model.config.sample_size) // self.patch  # static: no shape arithmetic at run time

    def forward(self, h: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        cond = self.emb(timestep, class_labels, hidden_dtype=h.dtype)  # (B, D)
        shift, scale = self.proj_out_1(F.silu(cond)).chunk(2, dim=1)  # 2 x (B, D)
        h = self.norm_out(h) * (1 + scale[:, None]) + shift[:, None]  # (B, T, D)
        h = self.proj_out_2(h)  # (B, T, p*p*C)
        batch = h.shape[0]
        grid, p, c = self.grid, self.patch, self.out_channels
        h = h.reshape(batch, grid, grid, p, p, c)  # (B, h, w, p, q, C)
        h = torch.einsum("nhwpqc->nchpwq", h)  # (B, C, h, p, w, q)
        return h.reshape(batch, c, grid * p, grid * p)  # (B, C, H, W)


class DiTParts(PatchTokenParts):
    """The DiT decomposition: ``tail(blocks[0:Nb](head(x), t, y), t, y) == model(x, t, y)``."""

    input_names = ("x", "timestep", "class_labels")
    hidden_name = "h"
    output_name = "out"
    cond_names = ("timestep", "class_labels")

    def __init__(self, model: nn.Module, spec: ModelSpec):
        self.model = model
        self.spec = spec
        self.num_blocks = len(model.transformer_blocks)
        self._head = Segment("head", DiTHead(model), ("x",), ("h",))
        self._tail = Segment("tail", DiTTail(model), ("h", *self.cond_names), ("out",))

    def head(self) -> Segment:
        return self._head

    def blocks(self, start: int, end: int) -> Segment:
        if not 0 <= start < end <= self.num_blocks:
            raise ValueError(f"block range [{start}, {end}) is outside [0, {self.num_blocks})")
        return Segment(block_name(start, end), DiTBlocks(self.model, start, end), ("h", *self.cond_names), ("h",),
                       start, end)

    def example_inputs(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random inputs of the model's shapes (``batch`` counts the CFG doubling)."""
        size = self.spec.sample_size
        return {
            "x": torch.randn(batch, self.spec.in_channels, size, size, generator=generator),
            "timestep": torch.randint(0, 1000, (batch,), generator=generator).float(),
            "class_labels": torch.randint(0, self.spec.num_classes + 1, (batch,), generator=generator),
        }
