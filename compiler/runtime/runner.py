"""Sampling with a plan: the dispatcher wired to a backend's variants, checked against the request."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ditcache.graphs import costs_for, parts_for
from ditcache.graphs.corrections import load_corrections, range_channel_shapes
from ditcache.graphs.plan import Plan
from ditcache.graphs.registry import ModelSpec
from ditcache.graphs.schedule import Schedule

from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.compiler.runtime.sampling import SampleRequest, sample


def plan_for(schedule: Schedule, spec: ModelSpec) -> Plan:
    """The schedule's plan on ``spec`` (MACs from the analytic cost model)."""
    calibrated = schedule.params.get("calibration", {}).get("model")
    if calibrated is not None and calibrated != spec.name:
        raise ValueError(f"{schedule.source}: its curves were calibrated on {calibrated}, not {spec.name}; "
                         f"run `ditcache calibrate --model {spec.name}`")
    return schedule.to_plan(spec.num_blocks, costs_for(spec))


def check_calibration(plan: Plan, request: SampleRequest) -> None:
    """Refuse sampling with another sampler or guidance than the schedule's curves were measured with."""
    calibration = plan.schedule.get("calibration", {})
    for key, asked in (("sampler", request.scheduler), ("guidance", request.guidance_scale)):
        if key in calibration and calibration[key] != asked:
            raise ValueError(f"the schedule's curves were calibrated with {key} {calibration[key]!r}, the request "
                             f"uses {asked!r}; calibrate again with --{'scheduler' if key == 'sampler' else key} {asked}")


def corrections_for(plan: Plan, spec: ModelSpec, parts) -> dict[str, torch.Tensor] | None:
    """The scale/shift tensors named by a corrected plan's schedule."""
    if not plan.corrected:
        return None
    return load_corrections(Path(plan.schedule["scale_shift"]), plan, range_channel_shapes(parts, plan))


def eager_dispatcher(model: nn.Module, spec: ModelSpec, plan: Plan,
                     corrections: Mapping[str, torch.Tensor] | None = None) -> Dispatcher:
    """A dispatcher running ``plan`` with the eager backend on ``model``."""
    parts = parts_for(model, spec)
    if corrections is None:
        corrections = corrections_for(plan, spec, parts)
    return Dispatcher(plan, eager_variants(parts, plan), corrections)


def sample_with_plan(dispatcher: Dispatcher, spec: ModelSpec, request: SampleRequest, progress: bool = False,
                     **kwargs) -> torch.Tensor:
    """Sample once with the dispatcher's plan (its step count must match the request's)."""
    if dispatcher.plan.num_steps != request.steps:
        raise ValueError(
            f"the schedule has {dispatcher.plan.num_steps} steps but {request.steps} were requested; "
            f"sample with --steps {dispatcher.plan.num_steps} or write a schedule for {request.steps} steps"
        )
    check_calibration(dispatcher.plan, request)
    dispatcher.reset()
    return sample(dispatcher, spec, request, progress=progress, **kwargs)
