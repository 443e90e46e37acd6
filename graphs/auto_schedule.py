"""Block-caching schedules from measured change curves: a threshold δ, or the δ that meets a target (the file
is written from a graphs.configs.BlockCacheConfig)."""

from __future__ import annotations

from typing import Sequence

from .macs import SegmentCosts
from .plan import Plan
from .schedule_rules import block_cache_replays, block_ranges, threshold_recompute


def plan_for_threshold(mean: Sequence[Sequence[float]], threshold: float, cache: str = "offset") -> Plan:
    """The block-caching plan that threshold δ gives on these curves."""
    steps = len(mean[0])
    recompute = {i: threshold_recompute(row, threshold) for i, row in enumerate(mean)}
    return Plan.from_replays(len(mean), block_ranges(recompute), block_cache_replays(steps, recompute), cache)


def threshold_for_target(mean: Sequence[Sequence[float]], target_speedup: float, costs: SegmentCosts | None = None,
                         iterations: int = 60) -> float:
    """Smallest δ whose plan reaches ``target_speedup`` in MACs (bisection: speedup grows with δ)."""
    costs = costs or SegmentCosts(0, (1,) * len(mean), 0)
    high = sum(sum(row[1:]) for row in mean) + 1.0
    best = plan_for_threshold(mean, high).theoretical_speedup(costs)
    if best < target_speedup:
        raise ValueError(f"target speedup {target_speedup} is out of reach: replaying every block after step 0 "
                         f"gives {best:.2f}x")
    low = 0.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if plan_for_threshold(mean, middle).theoretical_speedup(costs) >= target_speedup:
            high = middle
        else:
            low = middle
    return high
