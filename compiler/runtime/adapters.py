"""From flat compiled callables back to the dispatcher's VariantFn, at either granularity."""

from __future__ import annotations

from typing import Mapping

import torch

from ditcache.graphs.dtypes import dtype_of
from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.segments import Segment
from ditcache.graphs.streams import Streams
from ditcache.graphs.variants import cache_input_name

from ditcache.compiler.backend import FlatFn, GraphSpec
from ditcache.compiler.runtime.dispatcher import VariantFn
from ditcache.compiler.runtime.interpreter import segment_variant_fn

def cast_inputs(graph: GraphSpec, values: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The graph's inputs in order, each cast to the dtype it was built with."""
    out = []
    for spec in graph.inputs:
        value = values[spec.name]
        dtype = dtype_of(spec.dtype)
        out.append(value if value.dtype == dtype else value.to(dtype))
    return out


def variant_fn(flat: FlatFn, graph: GraphSpec, variant: Variant) -> VariantFn:
    """A compiled whole-variant graph as a VariantFn (output returned in float32)."""

    def run(inputs, caches, corrections):
        named = dict(inputs)
        named.update({cache_input_name(n): caches[n] for n in variant.replay})
        named.update(corrections)
        outs = flat(*cast_inputs(graph, named))
        return outs[0].float(), dict(zip(variant.record, outs[1:]))

    return run


def segment_fns(plan: Plan, flats: Mapping[str, FlatFn], graphs: Mapping[str, GraphSpec],
                segments: Mapping[str, Segment], hidden: str = "h",
                streams: Streams | None = None) -> dict[str, VariantFn]:
    """VariantFns chaining compiled segment graphs on the host (segment granularity; the replays, and the
    expansion of per-``streams`` scale/shift, run here)."""
    callables = {}
    for name, seg in segments.items():
        graph, flat = graphs[f"segment.{name}"], flats[f"segment.{name}"]

        def call(*xs, graph=graph, flat=flat):
            outs = flat(*cast_inputs(graph, dict(zip(graph.input_names, xs))))
            return outs[0] if len(outs) == 1 else tuple(outs)  # a head may hand several values on

        callables[name] = _CallableSegment(seg, call)
    return {v.name: _float_output(segment_variant_fn(plan, v, callables, hidden, streams=streams))
            for v in plan.variants}


def _float_output(fn: VariantFn) -> VariantFn:
    def run(inputs, caches, corrections):
        out, recorded = fn(inputs, caches, corrections)
        return out.float(), recorded

    return run


class _CallableSegment:
    """A segment whose call goes to a compiled callable."""

    def __init__(self, segment: Segment, call):
        self.name, self.inputs, self.outputs = segment.name, segment.inputs, segment.outputs
        self._call = call

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        return self._call(*xs)
