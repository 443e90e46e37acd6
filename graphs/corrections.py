"""Block caching's per-channel, per-step scale/shift of replayed outputs (a safetensors file)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .plan import Plan, Variant
from .segments import DenoiserParts, channel_shape_at
from .variants import scale_name, shift_name

ChannelShapes = tuple[int, ...] | Mapping[str, tuple[int, ...]]  # one shape for all ranges, or one per range name


class CorrectionsError(ValueError):
    """A scale/shift file that does not fit the plan or the model."""


def range_channel_shapes(parts: DenoiserParts, plan: Plan) -> dict[str, tuple[int, ...]]:
    """Per-channel correction shape of every cache range: its first block's (ranges never change width)."""
    return {r.name: channel_shape_at(parts, r.start) for r in plan.ranges}


def _shape(channel_shape: ChannelShapes, name: str) -> tuple[int, ...]:
    return tuple(channel_shape[name]) if isinstance(channel_shape, Mapping) else tuple(channel_shape)


def load_corrections(path: str | Path, plan: Plan, channel_shape: ChannelShapes | None = None) -> dict[str, torch.Tensor]:
    """Read ``scale.<range>`` / ``shift.<range>`` tensors of shape (steps, *channel_shape) for every
    range the plan replays (``channel_shape`` per range name where widths differ, see :func:`range_channel_shapes`;
    None when the model is not at hand: then only the step count and scale/shift agreement are checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CorrectionsError(f"scale/shift file {str(path)!r} does not exist; make it with "
                               f"`ditcache fit-correction`") from None
    except (SafetensorError, OSError) as exc:
        raise CorrectionsError(f"{path}: not a safetensors file of scale/shift tensors ({exc})") from None
    for r in plan.ranges:
        for kind in ("scale", "shift"):
            key = f"{kind}.{r.name}"
            if key not in tensors:
                raise CorrectionsError(f"{path}: no {key!r}; refit the correction for this schedule")
            shape = tuple(tensors[key].shape)
            expected = (plan.num_steps, *_shape(channel_shape, r.name)) if channel_shape is not None else \
                (plan.num_steps, *tuple(tensors[f"scale.{r.name}"].shape)[1:])
            if shape != expected:
                raise CorrectionsError(f"{path}: {key!r} has shape {shape}, this plan needs {expected}")
    return tensors


def identity_corrections(plan: Plan, channel_shape: ChannelShapes) -> dict[str, torch.Tensor]:
    """Scale 1, shift 0 everywhere: a corrected plan that behaves as the uncorrected one."""
    out = {}
    for r in plan.ranges:
        out[f"scale.{r.name}"] = torch.ones(plan.num_steps, *_shape(channel_shape, r.name))
        out[f"shift.{r.name}"] = torch.zeros(plan.num_steps, *_shape(channel_shape, r.name))
    return out


def step_corrections(tensors: Mapping[str, torch.Tensor], variant: Variant, step: int) -> dict[str, torch.Tensor]:
    """The variant's ``scale_<range>`` / ``shift_<range>`` inputs at ``step``."""
    out = {}
    for n in variant.replay:
        out[scale_name(n)] = tensors[f"scale.{n}"][step]
        out[shift_name(n)] = tensors[f"shift.{n}"][step]
    return out
