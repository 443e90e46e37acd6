"""Variants as pure functions: one interpreter executes any step program over any set of segments.

The same :func:`run_variant` runs inside a compiled graph (variant granularity: segments are eager
modules and the whole function is traced) and on the host (segment granularity: segments are compiled
artifacts and the adds/records run eagerly). Caches and corrections are explicit inputs and outputs.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from .plan import Plan, Variant
from .segments import DenoiserParts, Segment, block_name

SegmentRunner = Callable[[str, tuple[torch.Tensor, ...]], torch.Tensor]
# (range name, its input h, the replayed value, a function computing the range's true output) -> value to use
ReplayObserver = Callable[[str, torch.Tensor, torch.Tensor, Callable[[], torch.Tensor]], "torch.Tensor | None"]


def cache_input_name(range_name: str) -> str:
    return f"cache_{range_name}"


def cache_output_name(range_name: str) -> str:
    return f"new_cache_{range_name}"


def scale_name(range_name: str) -> str:
    return f"scale_{range_name}"


def shift_name(range_name: str) -> str:
    return f"shift_{range_name}"


def replay(h: torch.Tensor, cached: torch.Tensor, mode: str,
           scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> torch.Tensor:
    """A replayed range's output: ``h + Δ`` (offset) or the recorded output (output), optionally
    corrected per channel as ``scale * cached + shift``."""
    if scale is not None:
        cached = cached * scale + shift  # (B, T, D) * (D,) + (D,)
    return h + cached if mode == "offset" else cached


def segment_names(plan: Plan) -> list[str]:
    """Names of the segments a plan's variants chain: head, each block segment, tail."""
    return ["head", *(block_name(a, b) for a, b in plan.block_segments), "tail"]


def build_segments(parts: DenoiserParts, plan: Plan) -> dict[str, Segment]:
    """The plan's segments, cut at its boundaries."""
    segments = {"head": parts.head(), "tail": parts.tail()}
    for a, b in plan.block_segments:
        seg = parts.blocks(a, b)
        segments[seg.name] = seg
    return segments


def run_variant(
    plan: Plan,
    variant: Variant,
    run_segment: SegmentRunner,
    segment_inputs: Mapping[str, tuple[str, ...]],
    inputs: Mapping[str, torch.Tensor],
    caches: Mapping[str, torch.Tensor],
    corrections: Mapping[str, torch.Tensor] | None = None,
    hidden: str = "h",
    on_replay: ReplayObserver | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Execute one step's program.

    Args:
        plan: the layout (ranges, boundaries, cache mode).
        variant: what this step replays and records.
        run_segment: calls the named segment with its positional inputs.
        segment_inputs: each segment's input names (read from the environment).
        inputs: the model inputs (``x`` and the conditioning).
        caches: recorded values of the ranges this variant replays, keyed by range name.
        corrections: ``scale_<range>`` / ``shift_<range>`` tensors when the plan is corrected.
        on_replay: eager-only hook (calibration of corrections): sees each replay and may replace its value.
    Returns:
        the denoiser output and the newly recorded caches, keyed by range name.
    """
    env = dict(inputs)
    replaying = {plan.range(n).start: plan.range(n) for n in variant.replay}
    recording = [plan.range(n) for n in variant.record]
    starts: dict[str, torch.Tensor] = {}
    recorded: dict[str, torch.Tensor] = {}

    def call(name: str) -> torch.Tensor:
        return run_segment(name, tuple(env[k] for k in segment_inputs[name]))

    def run_range(start: int, end: int, h: torch.Tensor) -> torch.Tensor:
        """What blocks [start, end) compute from ``h`` (for observers)."""
        saved, env[hidden] = env[hidden], h
        for a, b in plan.block_segments:
            if start <= a and b <= end:
                env[hidden] = call(block_name(a, b))
        out, env[hidden] = env[hidden], saved
        return out

    env[hidden] = call("head")
    position = 0
    for a, b in plan.block_segments:
        if a < position:
            continue  # inside a replayed range
        for r in recording:
            if r.start == a and plan.cache == "offset":
                starts[r.name] = env[hidden]
        if a in replaying:
            r = replaying[a]
            scale = shift = None
            if plan.corrected:
                scale, shift = corrections[scale_name(r.name)], corrections[shift_name(r.name)]
            replayed = replay(env[hidden], caches[r.name], plan.cache, scale, shift)
            if on_replay is not None:
                replaced = on_replay(r.name, env[hidden], replayed, lambda r=r, h=env[hidden]: run_range(r.start, r.end, h))
                replayed = replayed if replaced is None else replaced
            env[hidden] = replayed
            position = r.end
        else:
            env[hidden] = call(block_name(a, b))
            position = b
        for r in recording:
            if r.end == position:
                recorded[r.name] = env[hidden] - starts[r.name] if plan.cache == "offset" else env[hidden]
    return call("tail"), recorded


class VariantModule(nn.Module):
    """One variant as a flat-signature module for torch.compile / ONNX export.

    forward(*model_inputs, *cache_inputs, *corrections) -> (out, *new_caches), in the order given by
    :attr:`input_names` and :attr:`output_names`.
    """

    def __init__(self, parts: DenoiserParts, plan: Plan, variant: Variant, segments: Mapping[str, Segment] | None = None):
        super().__init__()
        self.plan = plan
        self.variant = variant
        self.hidden = parts.hidden_name
        segs = dict(segments) if segments is not None else build_segments(parts, plan)
        self.segments = nn.ModuleDict({k.replace(".", "_"): s.module for k, s in segs.items()})
        self.segment_inputs = {k: s.inputs for k, s in segs.items()}
        self.model_inputs = tuple(parts.input_names)
        self.input_names = variant_input_names(parts, plan, variant)
        self.output_names = variant_output_names(parts, variant)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, args))
        inputs = {k: named[k] for k in self.model_inputs}
        caches = {n: named[cache_input_name(n)] for n in self.variant.replay}
        corrections = {k: v for k, v in named.items() if k.startswith(("scale_", "shift_"))}
        out, recorded = run_variant(
            self.plan, self.variant,
            lambda name, xs: self.segments[name.replace(".", "_")](*xs),
            self.segment_inputs, inputs, caches, corrections, self.hidden,
        )
        return (out, *(recorded[n] for n in self.variant.record))


def variant_input_names(parts: DenoiserParts, plan: Plan, variant: Variant) -> tuple[str, ...]:
    names = list(parts.input_names) + [cache_input_name(n) for n in variant.replay]
    if plan.corrected:
        for n in variant.replay:
            names += [scale_name(n), shift_name(n)]
    return tuple(names)


def variant_output_names(parts: DenoiserParts, variant: Variant) -> tuple[str, ...]:
    return (parts.output_name, *(cache_output_name(n) for n in variant.record))
