"""From a validated schedule to the Plan for one model: the only way, with every check (block counts, the
calibration identity, cached blocks, recompute blocks) done before a plan exists."""

from __future__ import annotations

from dataclasses import replace

from .adaptive import AdaptivePlan, adaptive_plan
from .macs import SegmentCosts
from .plan import Plan
from .registry import ModelSpec
from .schedule import Schedule, ScheduleError
from .schedule_rules import block_cache_replays, block_ranges, delta_dit_ranges, delta_dit_replays


def plan_for(schedule: Schedule, spec: ModelSpec, *, sampler: str | None = None,
             guidance: float | None = None) -> "Plan | AdaptivePlan":
    """The schedule's plan on ``spec`` (a Δ-DiT target speedup is solved with the analytic MACs of one image; an
    adaptive schedule gives a graphs.adaptive.AdaptivePlan, whose replays are decided at run time).

    Args:
        schedule: from load_schedule / parse_schedule / a config's ``to_schedule()``.
        spec: the model the plan is for; a schedule made from another model's curves is refused.
        sampler, guidance: the request's, where known (CLI sampling, fitting): refused when the curves were
            calibrated with others. Sampling checks them again (compiler.runtime.runner.sample_with_plan).
    Raises:
        ScheduleError: naming the schedule file, what does not fit, and the fix.
    """
    from . import costs_for

    calibration = schedule.calibration
    if calibration is not None:
        problem = calibration.model_mismatch(spec.name, spec.num_blocks) or \
            calibration.sampling_mismatch(sampler, guidance)
        if problem:
            raise ScheduleError(f"{schedule.source}: {problem}")
    num_blocks = spec.num_blocks
    if schedule.kind == "adaptive":  # variants fixed, the choice left to the run (graphs.adaptive)
        return adaptive_plan(schedule, spec)
    if schedule.kind == "full":
        plan = Plan.from_replays(num_blocks, (), [set()] * schedule.steps, schedule=schedule.to_dict())
    elif schedule.kind == "delta-dit":
        plan = _delta_dit_plan(schedule, num_blocks, costs_for(spec))
    else:
        plan = _block_cache_plan(schedule, num_blocks)
    return replace(plan, corrections=schedule.corrections, calibration=calibration)


def _delta_dit_plan(schedule: Schedule, num_blocks: int, costs: SegmentCosts) -> Plan:
    interval, cached = schedule.interval, schedule.cached_blocks
    normalized = schedule.to_dict()
    if schedule.target_speedup is not None:
        interval, cached = solve_delta_dit(schedule.steps, schedule.boundary, schedule.target_speedup, num_blocks,
                                           costs, schedule.source)
        normalized.update(interval=interval, cached_blocks=cached)
    if cached > num_blocks:
        raise ScheduleError(
            f"{schedule.source}: cached_blocks={cached} but the model has {num_blocks} blocks; use 1..{num_blocks}"
        )
    return Plan.from_replays(
        num_blocks,
        delta_dit_ranges(num_blocks, cached),
        delta_dit_replays(schedule.steps, schedule.boundary, interval),
        cache=schedule.cache,
        schedule=normalized,
    )


def solve_delta_dit(
    steps: int, boundary: int, target: float, num_blocks: int, costs: SegmentCosts | None, source: str
) -> tuple[int, int]:
    """(interval N, cached_blocks Nc) whose speedup meets ``target`` most gently (lowest speedup that
    reaches it; ties: smaller N, so caches are fresher)."""
    costs = costs or SegmentCosts(0, (1,) * num_blocks, 0)
    best: tuple[float, int, int] | None = None
    top = 1.0
    for interval in range(2, steps + 1):
        replays = delta_dit_replays(steps, boundary, interval)
        for cached in range(1, num_blocks + 1):
            plan = Plan.from_replays(num_blocks, delta_dit_ranges(num_blocks, cached), replays)
            speedup = plan.theoretical_speedup(costs)
            top = max(top, speedup)
            if speedup >= target and (best is None or (speedup, interval, cached) < best):
                best = (speedup, interval, cached)
    if best is None:
        raise ScheduleError(
            f"{source}: target_speedup {target} is out of reach for {steps} steps (best {top:.2f}x); "
            f"lower the target or use more steps"
        )
    return best[1], best[2]


def _block_cache_plan(schedule: Schedule, num_blocks: int) -> Plan:
    recompute = schedule.recompute
    bad = [b for b in recompute if b >= num_blocks]
    if bad:
        raise ScheduleError(
            f"{schedule.source}: recompute names block {bad[0]} but the model has {num_blocks} blocks "
            f"(0..{num_blocks - 1})"
        )
    return Plan.from_replays(
        num_blocks,
        block_ranges(recompute),
        block_cache_replays(schedule.steps, recompute),
        cache=schedule.cache,
        corrected=schedule.corrections is not None,
        schedule=schedule.to_dict(),
    )
