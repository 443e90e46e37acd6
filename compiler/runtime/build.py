"""The one dispatcher builder: a plan plus eager parts or loaded graphs (either granularity) plus its scale/shift
corrections -> a Dispatcher. The runner, the engine loader, ``apply``, the benchmarks and the calibration code all
build dispatchers here; the graphs stay pure, the state lives in the Dispatcher."""

from __future__ import annotations

import os
from typing import Callable, Mapping

import torch

from ditcache.graphs.adaptive import AdaptivePlan, is_adaptive
from ditcache.graphs.corrections import check_corrections, load_corrections, range_correction_shapes
from ditcache.graphs.plan import Plan
from ditcache.graphs.segments import DenoiserParts, Segment
from ditcache.graphs.streams import Streams, streams_of
from ditcache.graphs.variants import build_segments

from ditcache.compiler.backend import GRANULARITIES, FlatFn, GraphSpec
from ditcache.compiler.runtime.adapters import segment_fns, variant_fn
from ditcache.compiler.runtime.chunking import chunked
from ditcache.compiler.runtime.decider import AdaptiveDispatcher, compiled_adaptive_dispatcher, eager_adaptive_dispatcher
from ditcache.compiler.runtime.dispatcher import Dispatcher, VariantFn
from ditcache.compiler.runtime.interpreter import eager_variants, segment_variant_fn

Corrections = Mapping[str, torch.Tensor] | str | os.PathLike


def build_dispatcher(
    plan: Plan,
    *,
    parts: DenoiserParts | None = None,
    flats: Mapping[str, FlatFn] | None = None,
    graphs: Mapping[str, GraphSpec] | None = None,
    granularity: str = "variant",
    segments: Mapping[str, Segment] | None = None,
    corrections: Corrections | None = None,
    on_replay=None,
    trainable: bool = False,
    sync: Callable[[], None] | None = None,
    batch: int | None = None,
    streams: Streams | None = None,
) -> Dispatcher | AdaptiveDispatcher:
    """A Dispatcher running ``plan`` (an AdaptiveDispatcher for an adaptive plan: compiler.runtime.decider).

    Args:
        plan: from graphs.planning.plan_for (or an engine directory's manifest).
        parts: the model's decomposition: eager variants when no ``flats`` are given; the segments of segment
            granularity and the channel shapes of the corrections otherwise.
        flats, graphs: loaded compiled callables and their GraphSpecs, keyed by graph name (``variant.<name>``,
            ``segment.<name>``, or an adaptive plan's ``adaptive.<program>``).
        granularity: ``variant`` (one graph per variant) or ``segment`` (graphs chained on the host).
        segments: what the host chains at segment granularity when there are no ``parts`` (an engine
            directory's segment records).
        corrections: scale/shift tensors, or a file of them; default: a corrected plan's own file
            (``plan.corrections``).
        on_replay: eager only: called at every replay (closed-form fitting observes the true value there).
        trainable: eager only: autograd on and recorded caches detached (training the corrections, where a
            step's loss trains only that step's scale/shift).
        sync: called before reading a clock when timing (``torch.cuda.synchronize``).
        batch: the loaded graphs' model batch (static shapes): a call of another batch runs in chunks of it
            (compiler.runtime.chunking), so no request is refused for its size.
        streams: the hidden state's token streams when there are no ``parts`` (an engine directory's record): at
            segment granularity the host expands per-stream scale/shift over them (default: the parts').
    """
    if is_adaptive(plan):  # the three programs; the decisions live in the AdaptiveDispatcher
        return _adaptive_dispatcher(plan, parts, flats, graphs, granularity, on_replay, trainable, sync, batch)
    if flats is None:
        if parts is None:
            raise ValueError("build_dispatcher needs the model's parts (eager) or loaded graphs (flats and graphs)")
        variants = _trainable_variants(parts, plan) if trainable else eager_variants(parts, plan, on_replay)
    else:
        if on_replay is not None or trainable:
            raise ValueError("on_replay and trainable need eager variants (no flats)")
        streams = streams if streams is not None or parts is None else streams_of(parts)
        variants = compiled_variants(plan, flats, graphs or {}, granularity,
                                     segments if segments is not None else _segments_of(parts, plan, granularity),
                                     streams)
        if batch is not None:
            variants = {name: chunked(fn, batch) for name, fn in variants.items()}
    return Dispatcher(plan, variants, _corrections(plan, parts, corrections), sync)


def _adaptive_dispatcher(plan: AdaptivePlan, parts, flats, graphs, granularity: str, on_replay, trainable: bool,
                         sync, batch: int | None) -> AdaptiveDispatcher:
    if on_replay is not None or trainable:
        raise ValueError("adaptive schedules replay no corrections: on_replay and trainable do not apply")
    if granularity != "variant":
        raise ValueError(f"kind adaptive runs whole program graphs (variant granularity), not {granularity!r}")
    if flats is None:
        if parts is None:
            raise ValueError("build_dispatcher needs the model's parts (eager) or loaded graphs (flats and graphs)")
        return eager_adaptive_dispatcher(parts, plan, sync)
    return compiled_adaptive_dispatcher(plan, flats, graphs or {}, batch, sync)


def compiled_variants(plan: Plan, flats: Mapping[str, FlatFn], graphs: Mapping[str, GraphSpec], granularity: str,
                      segments: Mapping[str, Segment] | None = None,
                      streams: Streams | None = None) -> dict[str, VariantFn]:
    """One VariantFn per variant of ``plan`` from loaded graphs of either granularity (``streams``: see
    :func:`build_dispatcher`; variant graphs expand per-stream scale/shift themselves)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)} (got {granularity!r})")
    if granularity == "variant":
        return {v.name: variant_fn(flats[f"variant.{v.name}"], graphs[f"variant.{v.name}"], v) for v in plan.variants}
    if segments is None:
        raise ValueError("segment granularity needs the segments to chain (the model's parts or the directory's)")
    return segment_fns(plan, flats, graphs, segments, streams=streams)


def _segments_of(parts: DenoiserParts | None, plan: Plan, granularity: str) -> Mapping[str, Segment] | None:
    return build_segments(parts, plan) if parts is not None and granularity == "segment" else None


def _trainable_variants(parts: DenoiserParts, plan: Plan) -> dict[str, VariantFn]:
    segments = build_segments(parts, plan)
    streams = streams_of(parts)
    return {v.name: _detaching(segment_variant_fn(plan, v, segments, parts.hidden_name, streams=streams))
            for v in plan.variants}


def _detaching(fn: VariantFn) -> VariantFn:
    def run(inputs, caches, corrections):
        out, recorded = fn(inputs, caches, corrections)
        return out, {k: v.detach() for k, v in recorded.items()}

    return run


def _corrections(plan: Plan, parts: DenoiserParts | None,
                 given: Corrections | None) -> Mapping[str, torch.Tensor] | None:
    """The scale/shift tensors of a corrected plan, checked against it (and the model's table shapes, with parts:
    a per-channel table of a [text; image] model is broadcast to its streams' rows, see graphs/corrections.py)."""
    if not plan.corrected:
        return None
    shapes = range_correction_shapes(parts, plan) if parts is not None else None
    streams = streams_of(parts) if parts is not None else None
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given if shapes is None else check_corrections(given, plan, shapes, streams)
    path = given if given is not None else plan.corrections
    if path is None:
        raise ValueError("the plan replays with scale/shift but names no corrections file; pass corrections or "
                         "plan a schedule with scale_shift")
    return load_corrections(path, plan, shapes, streams)
