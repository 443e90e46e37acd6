"""GraphSpecs of an adaptive plan: one whole graph per program (``adaptive.probe``, ``adaptive.compute``,
``adaptive.replay``), at variant granularity only (each program is already one small chain)."""

from __future__ import annotations

import torch

from ditcache.graphs.adaptive import AdaptivePlan
from ditcache.graphs.adaptive_programs import CACHE_IN, PROBE_REF, program_modules
from ditcache.graphs.segments import DenoiserParts, hidden_shape_at

from ditcache.compiler.backend import GraphSpec, TensorSpec
from ditcache.compiler.graph_specs import model_example_inputs
from ditcache.compiler.shared_weights import weight_names


def program_graph_name(program: str) -> str:
    return f"adaptive.{program}"


def adaptive_graphs(parts: DenoiserParts, plan: AdaptivePlan, granularity: str, batch: int,
                    dtype: torch.dtype, seed: int = 0) -> list[GraphSpec]:
    """The three program graphs, with realistic example inputs: the probe's outputs feed the continuations'."""
    if granularity != "variant":
        raise ValueError(f"kind adaptive builds whole program graphs (variant granularity); {granularity!r} is not "
                         f"supported: export with --granularity variant")
    modules = program_modules(parts, plan)
    device = _device_of(modules["probe"])
    values = {k: v.to(device) for k, v in model_example_inputs(parts, batch, dtype, seed).items()}
    gen = torch.Generator().manual_seed(seed + 1)
    shape = hidden_shape_at(parts, batch, plan.replay_range.start)
    values[PROBE_REF] = torch.randn(shape, generator=gen).to(device, dtype)
    specs = []
    for name in ("probe", "compute", "replay"):
        module = modules[name]
        if name == "replay":
            values[CACHE_IN] = torch.randn(shape, generator=gen).to(device, dtype)
        example = tuple(values[n] for n in module.input_names)
        with torch.no_grad():
            outs = module(*example)
        if name == "probe":
            values.update(zip(module.output_names, outs))
        specs.append(GraphSpec(
            name=program_graph_name(name), module=module,
            inputs=tuple(TensorSpec.of(n, t) for n, t in zip(module.input_names, example)),
            outputs=tuple(TensorSpec.of(n, t) for n, t in zip(module.output_names, outs)),
            example_inputs=example, weight_names=weight_names(module, getattr(parts, "model", None))))
    return specs


def _device_of(module: torch.nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
