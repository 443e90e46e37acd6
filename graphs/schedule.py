"""schedule.yaml: the one representation of a caching schedule, validated once, turned into a Plan.

Kinds and keys (unknown keys are rejected)::

    kind: full            steps
    kind: delta-dit       steps, boundary | boundary_fraction, interval, cached_blocks | target_speedup,
                          cache (offset | output)
    kind: block-cache     steps, recompute {block: [steps]} | threshold + curves, cache, scale_shift
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .macs import SegmentCosts
from .plan import CACHE_MODES, Plan
from .schedule_rules import (
    block_cache_replays,
    boundary_from_curves,
    block_ranges,
    delta_dit_ranges,
    delta_dit_replays,
    threshold_recompute,
)

KINDS = ("full", "delta-dit", "block-cache")
CURVES_FORMAT = "ditcache-curves/1"
DEFAULT_BOUNDARY_FRACTION = 0.5

_KEYS = {
    "full": {"kind", "steps"},
    "delta-dit": {"kind", "steps", "boundary", "boundary_fraction", "interval", "cached_blocks",
                  "target_speedup", "cache", "curves"},
    "block-cache": {"kind", "steps", "recompute", "threshold", "curves", "cache", "scale_shift"},
}


class ScheduleError(ValueError):
    """A schedule file that is malformed or does not fit the model; the message says the fix."""


@dataclass(frozen=True)
class Schedule:
    """A validated schedule. Build with :func:`load_schedule` or :func:`parse_schedule`.

    Args:
        kind: ``full``, ``delta-dit`` or ``block-cache``.
        steps: number of sampling steps the schedule is made for.
        params: the kind's validated parameters (paths already resolved, curves already applied).
        source: where it was read from, for messages.
    """

    kind: str
    steps: int
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<schedule>"

    def to_dict(self) -> dict[str, Any]:
        """Normalized form (what the manifest stores and the hash covers)."""
        return {"kind": self.kind, "steps": self.steps, **{k: v for k, v in sorted(self.params.items())}}

    def to_plan(self, num_blocks: int, costs: SegmentCosts | None = None) -> Plan:
        """The per-step plan for a denoiser with ``num_blocks`` blocks (costs let Δ-DiT solve a target)."""
        if self.kind == "full":
            return Plan.from_replays(num_blocks, (), [set()] * self.steps, schedule=self.to_dict())
        if self.kind == "delta-dit":
            return _delta_dit_plan(self, num_blocks, costs)
        return _block_cache_plan(self, num_blocks)


# ---- parsing ------------------------------------------------------------------------------------
def load_schedule(path: str | Path) -> Schedule:
    """Read and validate a schedule.yaml (or .json)."""
    path = Path(path)
    if not path.is_file():
        raise ScheduleError(f"schedule file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScheduleError(f"{path}: not valid YAML: {exc}") from None
    return parse_schedule(data, source=str(path), base_dir=path.parent)


def parse_schedule(data: Any, source: str = "<schedule>", base_dir: Path | None = None) -> Schedule:
    """Validate a schedule given as a mapping."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"{source}: a schedule is a mapping with a 'kind' key, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ScheduleError(f"{source}: 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(set(data) - _KEYS[kind])
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, _KEYS[kind], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(
            f"{source}: unknown key {key!r} for kind {kind}{hint} (allowed: {', '.join(sorted(_KEYS[kind]))})"
        )
    steps = _int(data, "steps", source, minimum=1)
    if steps is None:
        raise ScheduleError(f"{source}: 'steps' is required (the number of sampling steps, e.g. steps: 20)")
    if kind == "full":
        return Schedule(kind, steps, {}, source)
    if kind == "delta-dit":
        return Schedule(kind, steps, _delta_dit_params(data, steps, source, base_dir or Path.cwd()), source)
    return Schedule(kind, steps, _block_cache_params(data, steps, source, base_dir or Path.cwd()), source)


def _int(data: Mapping, key: str, source: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScheduleError(f"{source}: {key!r} must be an integer (got {value!r})")
    if minimum is not None and value < minimum:
        raise ScheduleError(f"{source}: {key!r} must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise ScheduleError(f"{source}: {key!r} must be <= {maximum} (got {value})")
    return value


def _float(data: Mapping, key: str, source: str, low: float, high: float, open_low: bool = False) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ScheduleError(f"{source}: {key!r} must be a number (got {value!r})")
    if value > high or value < low or (open_low and value == low):
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise ScheduleError(f"{source}: {key!r} must be in {bound} (got {value})")
    return float(value)


def _cache_mode(data: Mapping, source: str) -> str:
    cache = data.get("cache", "offset")
    if cache not in CACHE_MODES:
        raise ScheduleError(
            f"{source}: 'cache' must be 'offset' (replay adds the recorded out - in: Δ-Cache, residual replay) "
            f"or 'output' (replay returns the recorded output), got {cache!r}"
        )
    return cache


def _delta_dit_params(data: Mapping, steps: int, source: str, base_dir: Path) -> dict[str, Any]:
    if data.get("boundary") == "auto":
        return _delta_dit_auto_boundary(data, steps, source, base_dir)
    if data.get("curves") is not None:
        raise ScheduleError(f"{source}: 'curves' is only used with 'boundary: auto'; remove it")
    boundary = _int(data, "boundary", source, minimum=0, maximum=steps)
    fraction = _float(data, "boundary_fraction", source, 0.0, 1.0)
    if boundary is not None and fraction is not None:
        raise ScheduleError(f"{source}: give 'boundary' (a step index) or 'boundary_fraction', not both")
    if boundary is None:
        boundary = round((DEFAULT_BOUNDARY_FRACTION if fraction is None else fraction) * steps)
    interval = _int(data, "interval", source, minimum=1, maximum=steps)
    cached = _int(data, "cached_blocks", source, minimum=1)
    target = _float(data, "target_speedup", source, 1.0, 100.0, open_low=True)
    if target is not None and (interval is not None or cached is not None):
        raise ScheduleError(
            f"{source}: 'target_speedup' solves for 'interval' and 'cached_blocks'; remove those or remove the target"
        )
    if target is None and (interval is None or cached is None):
        raise ScheduleError(
            f"{source}: delta-dit needs 'interval' (N, a full step every N steps) and 'cached_blocks' (Nc), "
            f"or 'target_speedup' to solve for them"
        )
    params: dict[str, Any] = {"boundary": boundary, "cache": _cache_mode(data, source)}
    if target is not None:
        params["target_speedup"] = target
    else:
        params.update(interval=interval, cached_blocks=cached)
    return params


def _delta_dit_auto_boundary(data: Mapping, steps: int, source: str, base_dir: Path) -> dict[str, Any]:
    """``boundary: auto``: b from measured change curves (explicit interval and cached_blocks needed)."""
    interval = _int(data, "interval", source, minimum=1, maximum=steps)
    cached = _int(data, "cached_blocks", source, minimum=1)
    if data.get("curves") is None or interval is None or cached is None or "target_speedup" in data \
            or "boundary_fraction" in data:
        raise ScheduleError(f"{source}: 'boundary: auto' needs 'curves' (from `ditcache calibrate`), 'interval' and "
                            f"'cached_blocks', and no target_speedup or boundary_fraction")
    curves_path = (base_dir / str(data["curves"])).resolve()
    mean, meta = read_curves(curves_path, steps)
    if cached > len(mean):
        raise ScheduleError(f"{source}: cached_blocks={cached} but the curves have {len(mean)} blocks")
    return {"boundary": boundary_from_curves(mean, steps, interval, cached), "boundary_from": str(curves_path),
            "interval": interval, "cached_blocks": cached, "cache": _cache_mode(data, source),
            "calibration": {k: meta[k] for k in ("model", "sampler", "guidance") if k in meta} | {"num_blocks": len(mean)}}


def _block_cache_params(data: Mapping, steps: int, source: str, base_dir: Path) -> dict[str, Any]:
    recompute = data.get("recompute")
    threshold = _float(data, "threshold", source, 0.0, 1e6)
    curves = data.get("curves")
    if (recompute is None) == (threshold is None):
        raise ScheduleError(
            f"{source}: block-cache needs either 'recompute' (block -> list of steps that compute it) or "
            f"'threshold' with 'curves' (a change-curves file from `ditcache calibrate`)"
        )
    params: dict[str, Any] = {"cache": _cache_mode(data, source)}
    if recompute is not None:
        if curves is not None:
            raise ScheduleError(f"{source}: 'curves' is only used with 'threshold'; remove it")
        params["recompute"] = _recompute_table(recompute, steps, source)
    else:
        if curves is None:
            raise ScheduleError(f"{source}: 'threshold' needs 'curves: PATH' (the change curves to threshold)")
        curves_path = (base_dir / str(curves)).resolve()
        mean, meta = read_curves(curves_path, steps)
        params.update(threshold=threshold, curves=str(curves_path),
                      recompute={i: threshold_recompute(row, threshold) for i, row in enumerate(mean)},
                      calibration={k: meta[k] for k in ("model", "sampler", "guidance") if k in meta}
                      | {"num_blocks": len(mean)})
    if data.get("scale_shift") is not None:
        path = (base_dir / str(data["scale_shift"])).resolve()
        if not path.is_file():
            raise ScheduleError(f"{source}: scale_shift file {str(path)!r} does not exist")
        params["scale_shift"] = str(path)
    return params


def _recompute_table(table: Any, steps: int, source: str) -> dict[int, list[int]]:
    if not isinstance(table, Mapping):
        raise ScheduleError(f"{source}: 'recompute' must map block index -> list of steps, e.g. {{3: [0, 4, 8]}}")
    out: dict[int, list[int]] = {}
    for block, computed in table.items():
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise ScheduleError(f"{source}: recompute keys are block indices >= 0 (got {block!r})")
        if not isinstance(computed, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in computed):
            raise ScheduleError(f"{source}: recompute[{block}] must be a list of step indices (got {computed!r})")
        bad = [s for s in computed if not 0 <= s < steps]
        if bad:
            raise ScheduleError(f"{source}: recompute[{block}] has step {bad[0]} outside [0, {steps})")
        if 0 not in computed:
            raise ScheduleError(f"{source}: recompute[{block}] must include step 0 (nothing is cached before it)")
        out[block] = sorted(set(computed))
    return out


def read_curves(path: Path, steps: int) -> tuple[list[list[float]], dict[str, Any]]:
    """Per-block mean change curves and their metadata from a calibration file, checked against the
    schedule's steps."""
    if not path.is_file():
        raise ScheduleError(f"curves file {str(path)!r} does not exist; make one with `ditcache calibrate`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ScheduleError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or data.get("format") != CURVES_FORMAT:
        raise ScheduleError(f"{path}: not a ditcache curves file (expected format {CURVES_FORMAT!r})")
    if data.get("steps") != steps:
        raise ScheduleError(
            f"{path}: curves were measured for {data.get('steps')} steps, the schedule has {steps}; "
            f"calibrate again with --steps {steps}"
        )
    mean = data.get("mean")
    if not isinstance(mean, list) or not all(isinstance(r, list) and len(r) == steps for r in mean):
        raise ScheduleError(f"{path}: 'mean' must be a list of per-block lists of {steps} values")
    return [[float(v) for v in row] for row in mean], dict(data.get("meta") or {})


# ---- plans --------------------------------------------------------------------------------------
def _delta_dit_plan(schedule: Schedule, num_blocks: int, costs: SegmentCosts | None) -> Plan:
    p = dict(schedule.params)
    if "target_speedup" in p:
        p["interval"], p["cached_blocks"] = solve_delta_dit(
            schedule.steps, p["boundary"], p["target_speedup"], num_blocks, costs, schedule.source
        )
    calibrated = p.get("calibration", {}).get("num_blocks")
    if calibrated is not None and calibrated != num_blocks:
        raise ScheduleError(f"{schedule.source}: the curves were measured on a model with {calibrated} blocks, "
                            f"this model has {num_blocks}; calibrate this model")
    if p["cached_blocks"] > num_blocks:
        raise ScheduleError(
            f"{schedule.source}: cached_blocks={p['cached_blocks']} but the model has {num_blocks} blocks; "
            f"use 1..{num_blocks}"
        )
    normalized = {**schedule.to_dict(), **p}
    return Plan.from_replays(
        num_blocks,
        delta_dit_ranges(num_blocks, p["cached_blocks"]),
        delta_dit_replays(schedule.steps, p["boundary"], p["interval"]),
        cache=p["cache"],
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
    recompute = {int(k): v for k, v in schedule.params["recompute"].items()}
    calibrated = schedule.params.get("calibration", {}).get("num_blocks")
    if calibrated is not None and calibrated != num_blocks:
        raise ScheduleError(
            f"{schedule.source}: the curves were measured on a model with {calibrated} blocks, this model has "
            f"{num_blocks}; calibrate this model"
        )
    bad = [b for b in recompute if b >= num_blocks]
    if bad:
        raise ScheduleError(
            f"{schedule.source}: recompute names block {bad[0]} but the model has {num_blocks} blocks (0..{num_blocks - 1})"
        )
    return Plan.from_replays(
        num_blocks,
        block_ranges(recompute),
        block_cache_replays(schedule.steps, recompute),
        cache=schedule.params["cache"],
        corrected="scale_shift" in schedule.params,
        schedule=schedule.to_dict(),
    )


def full_schedule(steps: int) -> Schedule:
    """The uncached schedule of ``steps`` steps."""
    return Schedule("full", steps, {}, "<full>")

