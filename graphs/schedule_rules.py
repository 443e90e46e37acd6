"""The two methods' step rules: Δ-DiT's stage-adaptive replays and block caching's threshold rule."""

from __future__ import annotations

from typing import Sequence

from .plan import CacheRange


def delta_dit_ranges(num_blocks: int, cached_blocks: int) -> tuple[CacheRange, CacheRange]:
    """Front range [0, Nc) and back range [Nb - Nc, Nb)."""
    return CacheRange("front", 0, cached_blocks), CacheRange("back", num_blocks - cached_blocks, num_blocks)


def delta_dit_is_full(step: int, boundary: int, interval: int) -> bool:
    """Full step every ``interval`` steps, and on the first step of the detail stage."""
    return step % interval == 0 or step == boundary


def delta_dit_replays(steps: int, boundary: int, interval: int) -> list[set[str]]:
    """Outline stage (s < b) replays the back range, detail stage (s >= b) the front range."""
    return [
        set() if delta_dit_is_full(s, boundary, interval) else {"back" if s < boundary else "front"}
        for s in range(steps)
    ]


def threshold_recompute(changes: Sequence[float], threshold: float) -> list[int]:
    """Block caching's rule for one block: compute at step 0, replay while the accumulated change
    since the last compute stays <= threshold, recompute when it would exceed it.

    ``changes[s]`` is the block's relative L1 change between steps s-1 and s (``changes[0]`` unused).
    """
    steps = [0]
    accumulated = 0.0
    for s in range(1, len(changes)):
        if accumulated + changes[s] > threshold:
            steps.append(s)
            accumulated = 0.0
        else:
            accumulated += changes[s]
    return steps


def block_cache_replays(steps: int, recompute: dict[int, Sequence[int]]) -> list[set[str]]:
    """Block i (range ``b{i}``) is replayed at every step not in its recompute list."""
    return [{f"b{i}" for i, computed in recompute.items() if s not in set(computed)} for s in range(steps)]


def block_ranges(recompute: dict[int, Sequence[int]]) -> list[CacheRange]:
    return [CacheRange(f"b{i}", i, i + 1) for i in sorted(recompute)]


def boundary_from_curves(mean: Sequence[Sequence[float]], steps: int, interval: int, cached_blocks: int) -> int:
    """Δ-DiT's boundary b chosen from measured change curves: the b whose plan replays the least change,
    summing the mean relative change of the back range over outline-stage cached steps and of the front
    range over detail-stage cached steps (the error a replay makes grows with how much the range moves)."""
    nb = len(mean)

    def range_change(start: int, end: int, step: int) -> float:
        return sum(mean[i][step] for i in range(start, end)) / (end - start)

    best = None
    for boundary in range(steps + 1):
        cost = 0.0
        for s, replayed in enumerate(delta_dit_replays(steps, boundary, interval)):
            if "back" in replayed:
                cost += range_change(nb - cached_blocks, nb, s)
            if "front" in replayed:
                cost += range_change(0, cached_blocks, s)
        if best is None or cost < best[0] - 1e-12:
            best = (cost, boundary)
    return best[1]
