"""GraphSpecs of a plan: one per variant (variant granularity) or one per segment (segment granularity)."""

from __future__ import annotations

import torch
from torch import nn

from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.segments import DenoiserParts, Segment
from ditcache.graphs.variants import (
    VariantModule,
    build_segments,
    cache_input_name,
    scale_name,
    shift_name,
)

from .backend import GRANULARITIES, GraphSpec, TensorSpec


class TupleOutputs(nn.Module):
    """A single-output segment as a flat module returning a tuple."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(*args)
        return out if isinstance(out, tuple) else (out,)


def model_example_inputs(parts: DenoiserParts, batch: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs of the graph shapes: the image in ``dtype``, conditioning as the sampler passes it."""
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(seed))
    inputs["x"] = inputs["x"].to(dtype)
    return inputs


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _spec(name: str, module: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...],
          example: tuple[torch.Tensor, ...]) -> GraphSpec:
    device = _device_of(module)
    example = tuple(t.to(device) for t in example)
    with torch.no_grad():
        outs = module(*example)
    return GraphSpec(
        name=name,
        module=module,
        inputs=tuple(TensorSpec.of(n, t) for n, t in zip(input_names, example)),
        outputs=tuple(TensorSpec.of(n, t) for n, t in zip(output_names, outs)),
        example_inputs=example,
    )


def variant_graph(parts: DenoiserParts, plan: Plan, variant: Variant, batch: int, dtype: torch.dtype,
                  segments: dict[str, Segment] | None = None, seed: int = 0) -> GraphSpec:
    """The whole variant as one graph: model inputs, caches and corrections in; output and records out."""
    module = VariantModule(parts, plan, variant, segments)
    values = model_example_inputs(parts, batch, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for n in variant.replay:
        values[cache_input_name(n)] = torch.randn(parts.hidden_shape(batch), generator=gen).to(dtype)
        values[scale_name(n)] = (1 + 0.1 * torch.randn(parts.channel_shape(), generator=gen)).to(dtype)
        values[shift_name(n)] = (0.1 * torch.randn(parts.channel_shape(), generator=gen)).to(dtype)
    example = tuple(values[n] for n in module.input_names)
    return _spec(f"variant.{variant.name}", module, module.input_names, module.output_names, example)


def segment_graph(parts: DenoiserParts, segment: Segment, batch: int, dtype: torch.dtype, seed: int = 0) -> GraphSpec:
    """One segment as a graph; its hidden-state input takes the hidden shape."""
    values = model_example_inputs(parts, batch, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    values[parts.hidden_name] = torch.randn(parts.hidden_shape(batch), generator=gen).to(dtype)
    example = tuple(values[n] for n in segment.inputs)
    outputs = tuple(f"{n}_out" if n in segment.inputs else n for n in segment.outputs)  # graph names are unique
    return _spec(f"segment.{segment.name}", TupleOutputs(segment.module), segment.inputs, outputs, example)


def plan_graphs(parts: DenoiserParts, plan: Plan, granularity: str, batch: int, dtype: torch.dtype) -> list[GraphSpec]:
    """Every graph a plan needs at ``granularity`` (``variant`` or ``segment``)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    segments = build_segments(parts, plan)
    if granularity == "segment":
        return [segment_graph(parts, s, batch, dtype) for s in segments.values()]
    return [variant_graph(parts, plan, v, batch, dtype, segments) for v in plan.variants]
