"""Block caching's per-channel, per-step scale/shift of replayed outputs (a safetensors file)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .plan import Plan, Variant
from .variants import scale_name, shift_name


class CorrectionsError(ValueError):
    """A scale/shift file that does not fit the plan or the model."""


def load_corrections(path: str | Path, plan: Plan, channel_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Read ``scale.<range>`` / ``shift.<range>`` tensors of shape (steps, *channel_shape) for every
    range the plan replays."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    expected = (plan.num_steps, *channel_shape)
    for r in plan.ranges:
        for kind in ("scale", "shift"):
            key = f"{kind}.{r.name}"
            if key not in tensors:
                raise CorrectionsError(f"{path}: no {key!r}; refit the correction for this schedule")
            if tuple(tensors[key].shape) != expected:
                raise CorrectionsError(
                    f"{path}: {key!r} has shape {tuple(tensors[key].shape)}, this plan needs {expected}"
                )
    return tensors


def identity_corrections(plan: Plan, channel_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Scale 1, shift 0 everywhere: a corrected plan that behaves as the uncorrected one."""
    out = {}
    for r in plan.ranges:
        out[f"scale.{r.name}"] = torch.ones(plan.num_steps, *channel_shape)
        out[f"shift.{r.name}"] = torch.zeros(plan.num_steps, *channel_shape)
    return out


def step_corrections(tensors: Mapping[str, torch.Tensor], variant: Variant, step: int) -> dict[str, torch.Tensor]:
    """The variant's ``scale_<range>`` / ``shift_<range>`` inputs at ``step``."""
    out = {}
    for n in variant.replay:
        out[scale_name(n)] = tensors[f"scale.{n}"][step]
        out[shift_name(n)] = tensors[f"shift.{n}"][step]
    return out
