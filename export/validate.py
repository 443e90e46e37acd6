"""Validation of a compiled graph against eager on fresh random inputs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ditcache.compiler.backend import FlatFn, GraphSpec

# relative max-abs error (max |a - b| / max |b|) and cosine bounds per precision
TOLERANCES = {"fp32": (1e-3, 0.99999), "fp16": (3e-2, 0.999), "bf16": (6e-2, 0.998)}


class ValidationError(RuntimeError):
    """A compiled graph whose outputs are beyond tolerance of eager."""


@dataclass(frozen=True)
class Agreement:
    """How closely one graph's outputs match eager (worst over its outputs)."""

    max_abs: float
    rel_max_abs: float
    cosine: float

    def as_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "rel_max_abs": self.rel_max_abs, "cosine": self.cosine}


def fresh_inputs(graph: GraphSpec, seed: int) -> tuple[torch.Tensor, ...]:
    """New random inputs like the graph's examples (labels and timesteps stay in their valid ranges)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec, example in zip(graph.inputs, graph.example_inputs):
        if not example.is_floating_point():
            out.append(example.flatten()[torch.randperm(example.numel(), generator=gen)].reshape(example.shape))
        elif spec.name == "timestep" and example.abs().max() <= 1:  # FLUX takes t / 1000 (its model multiplies)
            out.append(torch.rand(example.shape, generator=gen).to(example.dtype).to(example.device))
        elif spec.name == "timestep":
            out.append(torch.randint(0, 1000, example.shape, generator=gen).to(example.dtype).to(example.device))
        elif spec.name.startswith("scale_"):
            out.append((1 + 0.1 * torch.randn(example.shape, generator=gen)).to(example.dtype).to(example.device))
        else:
            out.append(torch.randn(example.shape, generator=gen).to(example.dtype).to(example.device))
    return tuple(out)


def compare(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> Agreement:
    worst = Agreement(0.0, 0.0, 1.0)
    for a, b in zip(got, want):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        max_abs = (a - b).abs().max().item()
        rel = max_abs / max(b.abs().max().item(), 1e-12)
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        worst = Agreement(max(worst.max_abs, max_abs), max(worst.rel_max_abs, rel), min(worst.cosine, cos))
    return worst


def validate(graph: GraphSpec, compiled: FlatFn, reference: GraphSpec, precision: str, seed: int = 1234) -> Agreement:
    """Run ``compiled`` and the fp32 eager ``reference`` on the same fresh inputs; raise beyond tolerance."""
    inputs = fresh_inputs(reference, seed)
    with torch.no_grad():
        want = reference.module(*inputs)
        cast = tuple(x.to(_dtype(s.dtype)).to(e.device) for x, s, e in zip(inputs, graph.inputs, graph.example_inputs))
        got = compiled(*cast)
    agreement = compare(tuple(got), tuple(want))
    rel_tol, cos_tol = TOLERANCES[precision]
    if agreement.rel_max_abs > rel_tol or agreement.cosine < cos_tol:
        raise ValidationError(
            f"{graph.name}: compiled output differs from eager beyond {precision} tolerance "
            f"(relative max-abs {agreement.rel_max_abs:.2e} > {rel_tol:.0e} or cosine {agreement.cosine:.6f} < {cos_tol})"
        )
    return agreement


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)
