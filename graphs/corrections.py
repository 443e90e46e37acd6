"""Block caching's per-step scale/shift of replayed outputs, per channel (and per token stream for [text; image]
families): a safetensors file whose metadata names its layout."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .plan import Plan, Variant
from .segments import DenoiserParts
from .streams import Streams, correction_shape_at
from .variants import scale_name, shift_name

ChannelShapes = tuple[int, ...] | Mapping[str, tuple[int, ...]]  # one shape for all ranges, or one per range name

LAYOUT_KEY = "layout"  # the file's metadata: what a table's rows are (written by fit-correction)
PER_CHANNEL = "per-channel"  # (steps, *C): one scale/shift per channel, shared by all tokens
PER_STREAM = "per-stream"  # (steps, S, D): a row per token stream (FLUX, SD3: text, image), see graphs/streams.py
STREAMS_KEY = "streams"  # per-stream files: the rows' stream names, comma-separated ("text,image")
REFIT = "regenerate it with `ditcache fit-correction` for this model and schedule"


class CorrectionsError(ValueError):
    """A scale/shift file that does not fit the plan or the model."""


def range_correction_shapes(parts: DenoiserParts, plan: Plan) -> dict[str, tuple[int, ...]]:
    """Scale/shift table shape (one step) of every cache range: its first block's (ranges never change width);
    (D,) or (C, 1, 1) per channel, (2, D) per stream and channel for [text; image] families."""
    return {r.name: correction_shape_at(parts, r.start) for r in plan.ranges}


def layout_metadata(streams: Streams | None) -> dict[str, str]:
    """What a corrections file of a model with these streams holds, for its safetensors metadata."""
    if streams is None:
        return {LAYOUT_KEY: PER_CHANNEL}
    return {LAYOUT_KEY: PER_STREAM, STREAMS_KEY: ",".join(streams.names)}


def _shape(channel_shape: ChannelShapes, name: str) -> tuple[int, ...]:
    return tuple(channel_shape[name]) if isinstance(channel_shape, Mapping) else tuple(channel_shape)


def _describe(shape: tuple[int, ...], streams: Streams | None) -> str:
    """What a table of ``shape`` holds, in words."""
    if streams is not None and len(shape) == 3:
        return f" (steps, a row per stream: {', '.join(streams.names)}, channels)"
    return " (steps, channels: per channel)" if len(shape) == 2 else f" (steps, channels{', 1' * (len(shape) - 2)})"


def load_corrections(path: str | Path, plan: Plan, channel_shape: ChannelShapes | None = None,
                     streams: Streams | None = None) -> dict[str, torch.Tensor]:
    """Read ``scale.<range>`` / ``shift.<range>`` tensors of shape (steps, *channel_shape) for every
    range the plan replays (``channel_shape`` per range name where widths differ, see :func:`range_correction_shapes`;
    None when the model is not at hand: then only the step count and scale/shift agreement are checked).

    With ``streams`` (a [text; image] model), a per-channel file of (steps, D) tables — written before corrections
    were per stream — loads with its row broadcast to every stream (steps, 2, D): the same shared correction, the
    same results."""
    tensors, metadata = read_corrections(path)
    _check_layout(metadata, streams if channel_shape is not None else None, str(path))
    shared = metadata.get(LAYOUT_KEY, PER_CHANNEL) == PER_CHANNEL  # files without a layout predate per-stream ones
    return check_corrections(tensors, plan, channel_shape, streams, where=str(path), broadcast=shared)


def read_corrections(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A scale/shift file's tensors and metadata, unchecked."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise CorrectionsError(f"scale/shift file {str(path)!r} does not exist; make it with "
                               f"`ditcache fit-correction`") from None
    except (SafetensorError, OSError) as exc:
        raise CorrectionsError(f"{path}: not a safetensors file of scale/shift tensors ({exc})") from None


def _check_layout(metadata: Mapping[str, str], streams: Streams | None, where: str) -> None:
    """Refuse a per-stream file whose rows are other streams than the model's."""
    if metadata.get(LAYOUT_KEY) != PER_STREAM or streams is None:
        return  # shapes say the rest
    rows = tuple(metadata.get(STREAMS_KEY, "").split(","))
    if rows != streams.names:
        raise CorrectionsError(f"{where}: its rows are the streams {', '.join(rows)}, this model's hidden state joins "
                               f"{', '.join(streams.names)}; {REFIT}")


def check_corrections(tensors: Mapping[str, torch.Tensor], plan: Plan, channel_shape: ChannelShapes | None = None,
                      streams: Streams | None = None, where: str = "the corrections",
                      broadcast: bool = True) -> dict[str, torch.Tensor]:
    """``tensors`` checked against the plan (and the model's table shapes, when given): the same tensors, with
    per-channel (steps, D) tables broadcast to (steps, S, D) for a model of ``streams`` (unless ``broadcast`` is
    False: a file that says it is per stream)."""
    out = dict(tensors)
    for r in plan.ranges:
        for kind in ("scale", "shift"):
            key = f"{kind}.{r.name}"
            if key not in out:
                raise CorrectionsError(f"{where}: no {key!r}; refit the correction for this schedule")
            shape = tuple(out[key].shape)
            if channel_shape is None:
                expected = (plan.num_steps, *tuple(out[f"scale.{r.name}"].shape)[1:])
            else:
                expected = (plan.num_steps, *_shape(channel_shape, r.name))
                if (broadcast and streams is not None and len(expected) == len(shape) + 1
                        and shape == (expected[0], *expected[2:])):
                    out[key] = out[key].unsqueeze(1).expand(expected).contiguous()  # shared: every stream's row
                    continue
            if shape != expected:
                described = _describe(expected, streams) if channel_shape is not None else ""
                raise CorrectionsError(f"{where}: {key!r} has shape {shape}, this plan needs {expected}{described}; "
                                       f"{REFIT}")
    return out


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
