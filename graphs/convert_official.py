"""The official facebookresearch/DiT checkpoint in diffusers' DiTTransformer2DModel: key conversion, and the two
places where diffusers' DiT computes something else than the official models.py (docs/models.md).

- Timestep features: official ``timestep_embedding`` uses the frequencies ``exp(-ln(10000) * i / half)``,
  diffusers' DiT builds its ``Timesteps`` with ``downscale_freq_shift=1``: ``exp(-ln(10000) * i / (half - 1))``.
- The MLP's pre-norm: official ``norm2`` has ``eps=1e-6``, diffusers' ``norm3`` takes ``norm_eps`` (default 1e-5).

A model loaded from an official checkpoint is built with ``norm_eps=1e-6`` and its timestep projections set to
shift 0, so it computes what the official model computes.
"""

from __future__ import annotations

import re

import torch
from torch import nn

OFFICIAL_NORM_EPS = 1e-6  # every LayerNorm of the official DiT
OFFICIAL_FREQ_SHIFT = 0  # the official timestep_embedding divides the exponents by half, not half - 1

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")

# official per-block key suffix -> diffusers per-block key suffix (qkv is split separately)
_BLOCK_KEYS = {
    "adaLN_modulation.1.weight": "norm1.linear.weight",
    "adaLN_modulation.1.bias": "norm1.linear.bias",
    "attn.proj.weight": "attn1.to_out.0.weight",
    "attn.proj.bias": "attn1.to_out.0.bias",
    "mlp.fc1.weight": "ff.net.0.proj.weight",
    "mlp.fc1.bias": "ff.net.0.proj.bias",
    "mlp.fc2.weight": "ff.net.2.weight",
    "mlp.fc2.bias": "ff.net.2.bias",
}

# official shared conditioning key -> diffusers key inside every block's norm1.emb
_SHARED_EMB_KEYS = {
    "t_embedder.mlp.0.weight": "timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embedder.embedding_table.weight",
}

_TOP_KEYS = {
    "x_embedder.proj.weight": "pos_embed.proj.weight",
    "x_embedder.proj.bias": "pos_embed.proj.bias",
    "final_layer.adaLN_modulation.1.weight": "proj_out_1.weight",
    "final_layer.adaLN_modulation.1.bias": "proj_out_1.bias",
    "final_layer.linear.weight": "proj_out_2.weight",
    "final_layer.linear.bias": "proj_out_2.bias",
}

# the official fixed sin-cos table; diffusers rebuilds the same table as a buffer
_IGNORED = {"pos_embed"}


def is_official_state_dict(state: dict[str, torch.Tensor]) -> bool:
    """True when ``state`` uses the facebookresearch/DiT key names."""
    return "x_embedder.proj.weight" in state and "final_layer.linear.weight" in state


def unwrap_checkpoint(obj: object) -> dict[str, torch.Tensor]:
    """The model state dict of an official ``.pt`` (a bare state dict, or a training checkpoint's ``ema``/``model``)."""
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict):
        return obj["ema"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if isinstance(obj, dict):
        return obj
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a state dict of tensors")


def convert_official_state_dict(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename an official DiT state dict into diffusers keys.

    The official model has one timestep/label embedder shared by all blocks; diffusers gives each
    block's ``norm1.emb`` its own copy, so those tensors are repeated ``num_layers`` times.
    Raises ValueError naming the first key it cannot place.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _IGNORED:
            continue
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = value
            continue
        if key in _SHARED_EMB_KEYS:
            for i in range(num_layers):
                out[f"transformer_blocks.{i}.norm1.emb.{_SHARED_EMB_KEYS[key]}"] = value
            continue
        match = _BLOCK.match(key)
        if match is None:
            raise ValueError(f"official checkpoint key {key!r} has no diffusers counterpart")
        index, rest = match.groups()
        prefix = f"transformer_blocks.{index}."
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            q, k, v = value.chunk(3, dim=0)  # (3D, D) -> 3 x (D, D)
            out[prefix + f"attn1.to_q.{kind}"] = q
            out[prefix + f"attn1.to_k.{kind}"] = k
            out[prefix + f"attn1.to_v.{kind}"] = v
        elif rest in _BLOCK_KEYS:
            out[prefix + _BLOCK_KEYS[rest]] = value
        else:
            raise ValueError(f"official checkpoint key {key!r} has no diffusers counterpart")
    return out


def use_official_timestep_embedding(model: nn.Module) -> None:
    """Set every block's timestep projection of a diffusers DiT to the official frequencies (shift 0), in place.

    Each block's ``norm1.emb`` (CombinedTimestepLabelEmbeddings) owns a ``Timesteps`` module; the tail reuses
    block 0's, so the decomposition (graphs/dit.py) sees the same embedding as the model's forward.
    """
    projections = [block.norm1.emb.time_proj for block in model.transformer_blocks]
    for projection in projections:
        if not hasattr(projection, "downscale_freq_shift"):
            raise ValueError(f"{type(model).__name__}'s timestep projection {type(projection).__name__} has no "
                             f"downscale_freq_shift; this diffusers version builds DiT differently")
        projection.downscale_freq_shift = OFFICIAL_FREQ_SHIFT
