"""GraphSpecs of a plan: one per variant (variant granularity) or one per segment (segment granularity)."""

from __future__ import annotations

import torch
from torch import nn

from ditcache.graphs.adaptive import is_adaptive
from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.segments import DenoiserParts, Segment, hidden_shape_at
from ditcache.graphs.streams import correction_shape_at
from ditcache.graphs.variants import (
    VariantModule,
    build_segments,
    cache_input_name,
    scale_name,
    shift_name,
)

from ditcache.compiler.backend import GRANULARITIES, GraphSpec, TensorSpec
from ditcache.compiler.shared_weights import weight_names


class TupleOutputs(nn.Module):
    """A single-output segment as a flat module returning a tuple."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(*args)
        return out if isinstance(out, tuple) else (out,)


def model_example_inputs(parts: DenoiserParts, batch: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs of the graph shapes, as the sampler passes them: the image and floating conditioning (text
    embeddings, micro-conditions) in ``dtype``; the timestep in float32; labels and masks as integers."""
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(seed))
    for name, value in inputs.items():
        if value.is_floating_point() and name != "timestep":
            inputs[name] = value.to(dtype)
    return inputs


def head_values(parts: DenoiserParts, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything the head hands on (hidden state and conditioning such as PixArt's caption tokens), computed
    from ``inputs``: realistic example values for the later segments' graph inputs."""
    head = parts.head()
    device = _device_of(head.module)
    with torch.no_grad():
        outs = head.module(*(inputs[n].to(device) for n in head.inputs))
    outs = (outs,) if isinstance(outs, torch.Tensor) else outs
    return {n: v.cpu() for n, v in zip(head.outputs, outs)}


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _spec(name: str, module: nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...],
          example: tuple[torch.Tensor, ...], parts: DenoiserParts) -> GraphSpec:
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
        weight_names=weight_names(module, getattr(parts, "model", None)),
    )


def variant_graph(parts: DenoiserParts, plan: Plan, variant: Variant, batch: int, dtype: torch.dtype,
                  segments: dict[str, Segment] | None = None, seed: int = 0) -> GraphSpec:
    """The whole variant as one graph: model inputs, caches and corrections in; output and records out."""
    module = VariantModule(parts, plan, variant, segments)
    values = model_example_inputs(parts, batch, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for n in variant.replay:
        block = plan.range(n).start  # a range's cache and correction take the shapes of its blocks' features
        values[cache_input_name(n)] = torch.randn(hidden_shape_at(parts, batch, block), generator=gen).to(dtype)
        table = correction_shape_at(parts, block)  # (D,), (C, 1, 1), or per stream (2, D)
        values[scale_name(n)] = (1 + 0.1 * torch.randn(table, generator=gen)).to(dtype)
        values[shift_name(n)] = (0.1 * torch.randn(table, generator=gen)).to(dtype)
    example = tuple(values[n] for n in module.input_names)
    return _spec(f"variant.{variant.name}", module, module.input_names, module.output_names, example, parts)


def chain_values(parts: DenoiserParts, segments: dict[str, Segment], batch: int, dtype: torch.dtype,
                 seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """The values each segment reads in one full step on random model inputs (``segments`` in the order a
    full step runs them, as :func:`build_segments` returns them): realistic example inputs of the right shapes
    for every segment graph, hidden states, embeddings and skip features included."""
    env = model_example_inputs(parts, batch, dtype, seed)
    seen: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, segment in segments.items():
            device = _device_of(segment.module)
            seen[name] = {k: env[k] for k in segment.inputs}
            outs = segment.module(*(env[k].to(device) for k in segment.inputs))
            env.update(zip(segment.outputs, (outs,) if isinstance(outs, torch.Tensor) else outs))
    return seen


def segment_graph(parts: DenoiserParts, segment: Segment, batch: int, dtype: torch.dtype, seed: int = 0,
                  values: dict[str, torch.Tensor] | None = None) -> GraphSpec:
    """One segment as a graph. ``values``: its example inputs (from :func:`chain_values`); without them, model
    inputs, what the head computes and a random hidden state of the segment's shape."""
    if values is None:
        values = model_example_inputs(parts, batch, dtype, seed)
        if any(n not in values for n in segment.inputs):  # values the head computes (PixArt: caption tokens, ...)
            values.update({k: v for k, v in head_values(parts, values).items() if k not in values})
        gen = torch.Generator().manual_seed(seed + 2)
        shape = hidden_shape_at(parts, batch, segment.start or 0)
        values[parts.hidden_name] = torch.randn(shape, generator=gen).to(dtype)
        missing = [n for n in segment.inputs if n not in values]
        if missing:
            raise ValueError(f"segment {segment.name} reads {missing}, which earlier segments compute: pass values "
                             f"from chain_values (plan_graphs does)")
    example = tuple(values[n] for n in segment.inputs)
    outputs = tuple(f"{n}_out" if n in segment.inputs else n for n in segment.outputs)  # graph names are unique
    return _spec(f"segment.{segment.name}", TupleOutputs(segment.module), segment.inputs, outputs, example, parts)


def plan_graphs(parts: DenoiserParts, plan: Plan, granularity: str, batch: int, dtype: torch.dtype) -> list[GraphSpec]:
    """Every graph a plan needs at ``granularity`` (``variant`` or ``segment``); an adaptive plan's three program
    graphs (compiler.adaptive_specs)."""
    if is_adaptive(plan):
        from ditcache.compiler.adaptive_specs import adaptive_graphs

        return adaptive_graphs(parts, plan, granularity, batch, dtype)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    segments = build_segments(parts, plan)
    if granularity == "segment":
        values = chain_values(parts, segments, batch, dtype)
        return [segment_graph(parts, s, batch, dtype, values=values[name]) for name, s in segments.items()]
    return [variant_graph(parts, plan, v, batch, dtype, segments) for v in plan.variants]
