"""Variants as pure functions: one interpreter executes any step program over any set of segments.

The same :func:`run_variant` runs inside a compiled graph (variant granularity: segments are eager
modules and the whole function is traced) and on the host (segment granularity: segments are compiled
artifacts and the adds/records run eagerly). Caches and corrections are explicit inputs and outputs.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from .plan import Plan, PlanError, Variant
from .segments import DenoiserParts, Segment, block_name, hidden_shape_at, link_name, link_of
from .streams import Streams, expand_correction, streams_of

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
           scale: torch.Tensor | None = None, shift: torch.Tensor | None = None,
           streams: Streams | None = None) -> torch.Tensor:
    """A replayed range's output: ``h + Δ`` (offset) or the recorded output (output), optionally
    corrected per channel as ``scale * cached + shift`` — per stream and channel where ``streams`` are given
    (a (2, D) table's text row on the text tokens, its image row on the image tokens)."""
    if scale is not None:
        scale, shift = expand_correction(scale, streams), expand_correction(shift, streams)  # (2, D) -> (L + T, D)
        cached = cached * scale + shift  # (B, T, D) * (D,) + (D,), or (B, C, H, W) * (C, 1, 1) + (C, 1, 1)
    return h + cached if mode == "offset" else cached


def build_segments(parts: DenoiserParts, plan: Plan) -> dict[str, Segment]:
    """The plan's segments, cut at its boundaries, in the order a full step runs them: head, then per block
    segment the family's link before it (U-Nets) and the segment, then tail."""
    check_replayable(parts, plan)
    segments = {"head": parts.head()}
    for a, b in plan.block_segments:
        link = link_of(parts, a) if a > 0 else None
        if link is not None:
            segments[link.name] = link
        seg = parts.blocks(a, b)
        segments[seg.name] = seg
    segments["tail"] = parts.tail()
    return segments


def check_replayable(parts: DenoiserParts, plan: Plan) -> None:
    """Raise PlanError for a cache range that cannot stand in for its blocks: one that also produces values a
    later segment reads (a U-Net range spanning a skip connection's source), or, replayed as an offset, one
    whose output shape differs from its input's (a range spanning a down- or up-sampler)."""
    hidden = parts.hidden_name
    for r in plan.ranges:
        outputs = parts.blocks(r.start, r.end).outputs
        if tuple(outputs) != (hidden,):
            extra = ", ".join(n for n in outputs if n != hidden)
            raise PlanError(f"cache range {r.name} [{r.start}, {r.end}) also produces {extra}, which later blocks "
                            f"read, so it cannot be replayed; cache smaller ranges (on a U-Net: single attention "
                            f"layers, kind: block-cache)")
        if plan.cache == "offset" and hidden_shape_at(parts, 1, r.start) != hidden_shape_at(parts, 1, r.end - 1):
            raise PlanError(f"cache range {r.name} [{r.start}, {r.end}) changes the feature shape "
                            f"{hidden_shape_at(parts, 1, r.start)[1:]} -> {hidden_shape_at(parts, 1, r.end - 1)[1:]}, "
                            f"so its offset (out - in) is undefined; use cache: output or smaller ranges")


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
    segment_outputs: Mapping[str, tuple[str, ...]] | None = None,
    streams: Streams | None = None,
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
        segment_outputs: each segment's output names; needed when a segment returns several values (the
            hidden state and what later segments read: PixArt's caption tokens, a U-Net's skip features).
            Segments named ``link.<i>`` (U-Nets) run before block i whatever the step replays.
        streams: the token streams of the hidden state (FLUX, SD3: text, image) when the corrections have a
            row per stream (graphs/streams.py); None for per-channel corrections.
    Returns:
        the denoiser output and the newly recorded caches, keyed by range name.
    """
    env = dict(inputs)
    replaying = {plan.range(n).start: plan.range(n) for n in variant.replay}
    recording = [plan.range(n) for n in variant.record]
    starts: dict[str, torch.Tensor] = {}
    recorded: dict[str, torch.Tensor] = {}

    def call(name: str):
        return run_segment(name, tuple(env[k] for k in segment_inputs[name]))

    def run(name: str) -> None:
        _bind(env, name, call(name), (segment_outputs or {}).get(name, (hidden,)), hidden)

    def run_range(start: int, end: int, h: torch.Tensor) -> torch.Tensor:
        """What blocks [start, end) compute from ``h`` (for observers); the environment is left as it was."""
        saved = dict(env)
        env[hidden] = h
        for a, b in plan.block_segments:
            if start <= a and b <= end:
                if a > start and link_name(a) in segment_inputs:
                    run(link_name(a))
                run(block_name(a, b))
        out = env[hidden]
        env.clear()
        env.update(saved)
        return out

    run("head")
    position = 0
    for a, b in plan.block_segments:
        if a < position:
            continue  # inside a replayed range
        if link_name(a) in segment_inputs:
            run(link_name(a))  # runs whether the blocks after it are computed or replayed
        for r in recording:
            if r.start == a and plan.cache == "offset":
                starts[r.name] = env[hidden]
        if a in replaying:
            r = replaying[a]
            scale = shift = None
            if plan.corrected:
                scale, shift = corrections[scale_name(r.name)], corrections[shift_name(r.name)]
            replayed = replay(env[hidden], caches[r.name], plan.cache, scale, shift, streams)
            if on_replay is not None:
                replaced = on_replay(r.name, env[hidden], replayed, lambda r=r, h=env[hidden]: run_range(r.start, r.end, h))
                replayed = replayed if replaced is None else replaced
            env[hidden] = replayed
            position = r.end
        else:
            run(block_name(a, b))
            position = b
        for r in recording:
            if r.end == position:
                recorded[r.name] = env[hidden] - starts[r.name] if plan.cache == "offset" else env[hidden]
    return call("tail"), recorded


def _bind(env: dict[str, torch.Tensor], segment: str, value, names: tuple[str, ...], hidden: str) -> None:
    """Put a segment's output(s) into the environment under their names."""
    if isinstance(value, torch.Tensor):
        env[names[0] if len(names) == 1 else hidden] = value
        return
    if len(names) != len(value):
        raise ValueError(f"segment {segment} returned {len(value)} values but names {len(names)} ({names}); "
                         f"pass segment_outputs to run_variant")
    env.update(zip(names, value))


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
        self.segment_outputs = {k: s.outputs for k, s in segs.items()}
        self.model_inputs = tuple(parts.input_names)
        self.input_names = variant_input_names(parts, plan, variant)
        self.output_names = variant_output_names(parts, variant)
        self.streams = streams_of(parts)  # static: per-stream corrections are expanded inside the graph

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, args))
        inputs = {k: named[k] for k in self.model_inputs}
        caches = {n: named[cache_input_name(n)] for n in self.variant.replay}
        corrections = {k: v for k, v in named.items() if k.startswith(("scale_", "shift_"))}
        out, recorded = run_variant(
            self.plan, self.variant,
            lambda name, xs: self.segments[name.replace(".", "_")](*xs),
            self.segment_inputs, inputs, caches, corrections, self.hidden, segment_outputs=self.segment_outputs,
            streams=self.streams,
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
