"""Sampling with a plan: an eager dispatcher for a model, and one sampling run checked against the request."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ditcache.graphs import parts_for
from ditcache.graphs.plan import Plan
from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.sampling import SampleRequest, sample


def eager_dispatcher(model: nn.Module, spec: ModelSpec, plan: Plan,
                     corrections: Mapping[str, torch.Tensor] | None = None) -> Dispatcher:
    """A dispatcher running ``plan`` with the eager backend on ``model`` (a corrected plan's own scale/shift file
    unless ``corrections`` are given)."""
    return build_dispatcher(plan, parts=parts_for(model, spec), corrections=corrections)


def check_request(plan: Plan, request: SampleRequest) -> None:
    """Refuse a request the plan was not made for: another step count, or another sampler or guidance than the
    schedule's curves were calibrated with (the rule is the plan's Calibration's, as in graphs.planning.plan_for)."""
    if plan.num_steps != request.steps:
        raise ValueError(
            f"the schedule has {plan.num_steps} steps but {request.steps} were requested; "
            f"sample with --steps {plan.num_steps} or write a schedule for {request.steps} steps"
        )
    if plan.calibration is not None:
        problem = plan.calibration.sampling_mismatch(request.scheduler, request.guidance_scale)
        if problem:
            raise ValueError(f"the schedule: {problem}")


def sample_with_plan(dispatcher: Dispatcher, spec: ModelSpec, request: SampleRequest, progress: bool = False,
                     **kwargs) -> torch.Tensor:
    """Sample once with the dispatcher's plan (its step count and calibration must fit the request)."""
    check_request(dispatcher.plan, request)
    dispatcher.reset()
    return sample(dispatcher, spec, request, progress=progress, **kwargs)
