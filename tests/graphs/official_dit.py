"""An independent reference for the official DiT (Peebles & Xie, facebookresearch/DiT), from its formulas.

Written for the tests from the paper's description and the state dict's key names, in plain torch functions: it
never builds a diffusers module and never calls ditcache. ``official_state`` makes a random checkpoint in the
official layout (key names, fused qkv, the stored sin-cos table); ``official_forward`` runs it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FREQUENCY_DIM = 256  # sinusoidal timestep features fed to the timestep MLP
MAX_PERIOD = 10000
EPS = 1e-6  # every LayerNorm of the official model


def timestep_features(t: torch.Tensor, dim: int = FREQUENCY_DIM, shift: float = 0.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) features ``[cos(t w_i), sin(t w_i)]``, ``w_i = P^(-i / (half - shift))``.

    ``shift=0`` is the official DiT's (GLIDE's) ``timestep_embedding``; ``shift=1`` is diffusers' DiT. Computed
    in float32, as both models do."""
    half = dim // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / (half - shift)  # (half,)
    args = t[:, None].float() * torch.exp(exponent)[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)


def sincos_table(dim: int, grid: int) -> torch.Tensor:
    """(1, grid², dim) fixed 2-D position table (MAE): half the channels encode the row, half the column."""
    omega = 1.0 / MAX_PERIOD ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))  # (dim/4,)

    def one_axis(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, dim/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim/2)

    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # (grid, grid)
    # the official code stacks meshgrid(w, h) and encodes its first plane (the column index) in the first half
    table = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)  # (grid², dim)
    return torch.from_numpy(table).float()[None]


def official_state(depth: int, hidden: int, heads: int, patch: int, in_channels: int, num_classes: int,
                   input_size: int, seed: int = 0, learn_sigma: bool = True) -> dict[str, torch.Tensor]:
    """A random state dict under facebookresearch/DiT's key names (every tensor non-zero, so that a dropped or
    misplaced one changes the output), with the stored position table."""
    gen = torch.Generator().manual_seed(seed)
    out_channels = 2 * in_channels if learn_sigma else in_channels

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {
        "pos_embed": sincos_table(hidden, input_size // patch),
        "x_embedder.proj.weight": rand(hidden, in_channels, patch, patch),
        "x_embedder.proj.bias": rand(hidden),
        "t_embedder.mlp.0.weight": rand(hidden, FREQUENCY_DIM),
        "t_embedder.mlp.0.bias": rand(hidden),
        "t_embedder.mlp.2.weight": rand(hidden, hidden),
        "t_embedder.mlp.2.bias": rand(hidden),
        "y_embedder.embedding_table.weight": rand(num_classes + 1, hidden),  # + the null class
        "final_layer.adaLN_modulation.1.weight": rand(2 * hidden, hidden),
        "final_layer.adaLN_modulation.1.bias": rand(2 * hidden),
        "final_layer.linear.weight": rand(patch * patch * out_channels, hidden),
        "final_layer.linear.bias": rand(patch * patch * out_channels),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        state.update({
            b + "attn.qkv.weight": rand(3 * hidden, hidden), b + "attn.qkv.bias": rand(3 * hidden),
            b + "attn.proj.weight": rand(hidden, hidden), b + "attn.proj.bias": rand(hidden),
            b + "mlp.fc1.weight": rand(4 * hidden, hidden), b + "mlp.fc1.bias": rand(4 * hidden),
            b + "mlp.fc2.weight": rand(hidden, 4 * hidden), b + "mlp.fc2.bias": rand(hidden),
            b + "adaLN_modulation.1.weight": rand(6 * hidden, hidden), b + "adaLN_modulation.1.bias": rand(6 * hidden),
        })
    return state


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, T, D)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=EPS)  # no affine parameters


def _attention(x: torch.Tensor, sd: dict[str, torch.Tensor], prefix: str, heads: int) -> torch.Tensor:
    """Multi-head self-attention with the fused qkv projection, softmax written out."""
    batch, tokens, dim = x.shape
    qkv = F.linear(x, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"])  # (B, T, 3D)
    q, k, v = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)  # (B, H, T, T)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)  # (B, T, D)
    return F.linear(out, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


def timestep_embedding(sd: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, D): the official t_embedder (features, Linear, SiLU, Linear)."""
    h = F.linear(timestep_features(t), sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])
    return F.linear(F.silu(h), sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])


@torch.no_grad()
def official_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                     heads: int) -> torch.Tensor:
    """The official DiT forward (eval: no label dropout) of state dict ``sd`` on (B, C, H, W) inputs."""
    proj = sd["x_embedder.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    h = F.conv2d(x, proj, sd["x_embedder.proj.bias"], stride=patch)  # (B, D, h, w)
    batch, _, grid, _ = h.shape
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]  # (B, T, D)
    c = timestep_embedding(sd, t) + sd["y_embedder.embedding_table.weight"][y]  # (B, D)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        mod = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"])
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # 6 x (B, D)
        h = h + gate_msa[:, None] * _attention(_modulate(_norm(h), shift_msa, scale_msa), sd, b + "attn.", heads)
        m = F.linear(_modulate(_norm(h), shift_mlp, scale_mlp), sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])
        m = F.linear(F.gelu(m, approximate="tanh"), sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])  # (B, T, D)
        h = h + gate_mlp[:, None] * m
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)  # 2 x (B, D)
    h = F.linear(_modulate(_norm(h), shift, scale), sd["final_layer.linear.weight"],
                 sd["final_layer.linear.bias"])  # (B, T, p*p*C)
    channels = h.shape[-1] // (patch * patch)
    h = h.reshape(batch, grid, grid, patch, patch, channels)  # (B, h, w, p, q, C)
    h = torch.einsum("nhwpqc->nchpwq", h)  # (B, C, h, p, w, q)
    return h.reshape(batch, channels, grid * patch, grid * patch)  # (B, C, H, W)
