"""The host-side interpreter: variants as chains of callable segments (eager, or compiled per segment)."""

from __future__ import annotations

from typing import Mapping

import torch

from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.segments import DenoiserParts, Segment
from ditcache.graphs.streams import Streams, streams_of
from ditcache.graphs.variants import build_segments, run_variant

from ditcache.compiler.runtime.dispatcher import VariantFn


def segment_variant_fn(plan: Plan, variant: Variant, segments: Mapping[str, Segment], hidden: str = "h",
                       on_replay=None, streams: Streams | None = None) -> VariantFn:
    """A variant that chains callable segments on the host (segment granularity); ``streams``: the hidden state's
    token streams, for per-stream scale/shift (graphs/streams.py)."""
    inputs_of = {k: s.inputs for k, s in segments.items()}
    outputs_of = {k: s.outputs for k, s in segments.items()}

    def run(inputs, caches, corrections):
        return run_variant(plan, variant, lambda name, xs: segments[name](*xs), inputs_of, inputs, caches,
                           corrections, hidden, on_replay, outputs_of, streams)

    return run


def eager_variants(parts: DenoiserParts, plan: Plan, on_replay=None) -> dict[str, VariantFn]:
    """One eager callable per variant of ``plan``, all sharing the model's parameters."""
    segments = build_segments(parts, plan)
    streams = streams_of(parts)
    fns = {v.name: segment_variant_fn(plan, v, segments, parts.hidden_name, on_replay, streams) for v in plan.variants}
    return {name: torch.no_grad()(fn) for name, fn in fns.items()}
