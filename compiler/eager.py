"""The eager backend: variants run as plain PyTorch, the reference every other backend is checked against."""

from __future__ import annotations

from typing import Mapping

import torch

from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.segments import DenoiserParts, Segment
from ditcache.graphs.variants import build_segments, run_variant

from .dispatcher import VariantFn


def segment_variant_fn(plan: Plan, variant: Variant, segments: Mapping[str, Segment], hidden: str = "h",
                       on_replay=None) -> VariantFn:
    """A variant that chains callable segments on the host (segment granularity)."""
    inputs_of = {k: s.inputs for k, s in segments.items()}
    outputs_of = {k: s.outputs for k, s in segments.items()}

    def run(inputs, caches, corrections):
        return run_variant(plan, variant, lambda name, xs: segments[name](*xs), inputs_of, inputs, caches,
                           corrections, hidden, on_replay, outputs_of)

    return run


def eager_variants(parts: DenoiserParts, plan: Plan, on_replay=None) -> dict[str, VariantFn]:
    """One eager callable per variant of ``plan``, all sharing the model's parameters."""
    segments = build_segments(parts, plan)
    fns = {v.name: segment_variant_fn(plan, v, segments, parts.hidden_name, on_replay) for v in plan.variants}
    return {name: torch.no_grad()(fn) for name, fn in fns.items()}


class EagerBackend:
    """Plain PyTorch: no artifacts; the graph's module is the callable."""

    name = "eager"
    writes_artifacts = False

    def unavailable_reason(self, settings) -> str | None:
        if settings.device == "cuda" and not torch.cuda.is_available():
            return "CUDA was requested but torch.cuda.is_available() is False"
        return None

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def build(self, graph, settings, directory):
        return []

    def load(self, graph, settings, files):
        if graph.module is None:
            raise ValueError(f"eager backend needs the model to run {graph.name}")
        return torch.no_grad()(graph.module)
