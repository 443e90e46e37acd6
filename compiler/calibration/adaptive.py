"""Calibration of adaptive schedules: the probe-vs-output change curves and their rescale polynomial (TeaCache fits
one the same way), and the threshold that meets a target speedup on calibration runs (eager dispatcher)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ditcache.graphs import costs_for, parts_for
from ditcache.graphs.adaptive import AdaptivePlan, AdaptivePolicy
from ditcache.graphs.adaptive_curves import AdaptiveCurves
from ditcache.graphs.adaptive_programs import PROBE, PROBE_REF, SIGNAL, program_modules, relative_l1_rows
from ditcache.graphs.registry import ModelSpec
from ditcache.graphs.segments import hidden_shape_at

from ditcache.compiler.runtime.decider import eager_adaptive_dispatcher
from ditcache.compiler.runtime.sampling import SampleRequest, sample

DEFAULT_DEGREE = 4  # TeaCache's polynomials are of degree 4


@torch.no_grad()
def measure_adaptive(model: nn.Module, spec: ModelSpec, requests: Sequence[SampleRequest], signal: str,
                     replay: str | tuple[int, int] = "rest", degree: int = DEFAULT_DEGREE, weights_sha256: str = "",
                     progress: bool = False) -> AdaptiveCurves:
    """Full sampling runs (every step computed) recording, per row and step, the probe's relative L1 change from the
    step before and the denoiser output's; the rescale polynomial is fitted output ≈ poly(probe) (numpy.polyfit)."""
    requests = list(requests)
    if not requests:
        raise ValueError("adaptive calibration needs at least one request")
    steps = requests[0].steps
    plan = AdaptivePlan.build(AdaptivePolicy(steps=steps, threshold=0.0, signal=signal, replay=replay, warmup=1,
                                             final=0), spec.num_blocks)
    parts = parts_for(model, spec)
    modules = program_modules(parts, plan)
    probe_sums, output_sums, counts = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    xs: list[float] = []
    ys: list[float] = []

    def denoiser_for_run():
        state: dict = {"step": 0, "probe": None, "out": None}

        def run(inputs):
            ref = state["probe"]
            if ref is None:
                ref = torch.zeros(hidden_shape_at(parts, inputs["x"].shape[0], plan.replay_range.start))
            probed = dict(zip(modules["probe"].output_names,
                              modules["probe"](*({**inputs, PROBE_REF: ref}[n] for n in modules["probe"].input_names))))
            named = {**inputs, **probed}
            outs = dict(zip(modules["compute"].output_names,
                            modules["compute"](*(named[n] for n in modules["compute"].input_names))))
            out = outs["out"]
            s = state["step"]
            if state["out"] is not None:
                probe_change = probed[SIGNAL].double()  # (B,)
                out_change = relative_l1_rows(out, state["out"]).double()  # (B,)
                xs.extend(probe_change.tolist())
                ys.extend(out_change.tolist())
                probe_sums[s] += float(probe_change.sum())
                output_sums[s] += float(out_change.sum())
                counts[s] += probe_change.numel()
            state.update(step=s + 1, probe=probed[PROBE], out=out)
            return out

        return run

    iterator = requests
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(requests, desc="calibrate adaptive", unit="run")
    for request in iterator:
        sample(denoiser_for_run(), spec, request)
    if len(xs) <= degree:
        raise ValueError(f"{len(xs)} (row, step) pairs cannot fit a degree-{degree} polynomial; calibrate with more "
                         f"steps, seeds or classes")
    coefficients = np.polyfit(np.array(xs), np.array(ys), degree).tolist()
    first = requests[0]
    meta = {"model": spec.name, "weights_sha256": weights_sha256, "sampler": first.scheduler,
            "guidance": first.guidance_scale, "classes": sorted({c for r in requests for c in r.class_labels}),
            "seeds": sorted({r.seed for r in requests}), "degree": degree}
    mean = lambda sums: [float(v / c) if c else 0.0 for v, c in zip(sums, counts)]  # noqa: E731
    r = plan.replay_range
    return AdaptiveCurves(signal, (r.start, r.end), steps, mean(probe_sums), mean(output_sums), coefficients, len(xs),
                          meta)


@torch.no_grad()
def speedup_at(model: nn.Module, spec: ModelSpec, policy: AdaptivePolicy, requests: Sequence[SampleRequest]) -> float:
    """Theoretical speedup (MACs) of ``policy`` over the calibration runs: Σ full MACs / Σ MACs of the runs."""
    plan = AdaptivePlan.build(policy, spec.num_blocks)
    dispatcher = eager_adaptive_dispatcher(parts_for(model, spec), plan)
    costs = costs_for(spec)
    full = spent = 0
    for request in requests:
        dispatcher.reset()
        sample(dispatcher, spec, request)
        full += costs.full * plan.num_steps
        spent += plan.macs_of(dispatcher.decider.replayed, costs)
    return full / spent


def threshold_for_speedup(model: nn.Module, spec: ModelSpec, policy: AdaptivePolicy,
                          requests: Sequence[SampleRequest], target: float, grid: int = 16, refine: int = 6,
                          log: Callable[[str], None] | None = None) -> tuple[float, float]:
    """The smallest threshold (on a geometric grid, then bisected) whose speedup over the calibration runs meets
    ``target``; deterministic (fixed grid, fixed seeds). Returns (threshold, its speedup)."""
    plan = AdaptivePlan.build(replace(policy, threshold=0.0), spec.num_blocks)
    low_macs, high_macs = plan.macs_bounds(costs_for(spec))
    if high_macs / low_macs < target:
        raise ValueError(f"target speedup {target} is out of reach for this schedule: at most "
                         f"{high_macs / low_macs:.2f}x (warm-up {policy.warmup}, final {policy.final}, at most {policy.max_consecutive} replays in "
                         f"a row); raise max_consecutive or lower the target")
    cache: dict[float, float] = {}

    def measure(threshold: float) -> float:
        if threshold not in cache:
            cache[threshold] = speedup_at(model, spec, replace(policy, threshold=threshold), requests)
            if log:
                log(f"threshold {threshold:.4g}: speedup {cache[threshold]:.3f}x")
        return cache[threshold]

    thresholds = [0.0] + [float(v) for v in np.geomspace(1e-3, 10.0, grid)]
    below, above = 0.0, None
    for t in thresholds:
        if measure(t) >= target:
            above = t
            break
        below = t
    if above is None:
        raise ValueError(f"no threshold up to {thresholds[-1]} reaches {target}x on the calibration runs (best "
                         f"{max(cache.values()):.2f}x); lower the target")
    for _ in range(refine):
        middle = (below + above) / 2
        if measure(middle) >= target:
            above = middle
        else:
            below = middle
    return above, measure(above)
