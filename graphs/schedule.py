"""schedule.yaml: the one representation of a caching schedule, validated once (graphs.planning turns it into a Plan).

Kinds and keys (unknown keys are rejected, and so is a key given twice)::

    kind: full            steps
    kind: delta-dit       steps, boundary | boundary_fraction | boundary: auto + curves, interval, cached_blocks |
                          target_speedup, cache (offset | output)
    kind: block-cache     steps, recompute {block: [steps]} | threshold + curves, cache, scale_shift
    kind: adaptive        steps, threshold, signal (first-block | modulated-input), replay (rest | [start, end]),
                          warmup, final, max_consecutive, rescale, cache (decided at run time: docs/adaptive.md)

Paths (``curves``, ``scale_shift``) are relative to the schedule file's folder. The normalized form (what a
manifest stores and a plan hash covers) names files by their sha256, never by where they lie.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .adaptive import KEYS as ADAPTIVE_KEYS
from .adaptive import adaptive_params
from .curves import CURVES_FORMAT, Calibration, ChangeCurves, CurvesError, read_utf8
from .plan import CACHE_MODES
from .schedule_rules import boundary_from_curves, threshold_recompute

__all__ = ["CURVES_FORMAT", "KINDS", "Schedule", "ScheduleError", "full_schedule", "load_schedule", "parse_schedule",
           "read_schedule_mapping"]

KINDS = ("full", "delta-dit", "block-cache", "adaptive")
DEFAULT_BOUNDARY_FRACTION = 0.5

_KEYS = {
    "full": {"kind", "steps"},
    "delta-dit": {"kind", "steps", "boundary", "boundary_fraction", "interval", "cached_blocks",
                  "target_speedup", "cache", "curves"},
    "block-cache": {"kind", "steps", "recompute", "threshold", "curves", "cache", "scale_shift"},
    "adaptive": set(ADAPTIVE_KEYS),
}


class ScheduleError(ValueError):
    """A schedule file that is malformed or does not fit the model; the message says the fix."""


@dataclass(frozen=True)
class Schedule:
    """A validated schedule. Build with :func:`load_schedule`, :func:`parse_schedule` or a config of
    graphs.configs; plan it with :func:`ditcache.graphs.planning.plan_for`.

    Args:
        kind: ``full``, ``delta-dit``, ``block-cache`` or ``adaptive``.
        steps: number of sampling steps the schedule is made for.
        params: the kind's normalized parameters (curves already applied, files named by sha256); read them
            through the typed properties.
        source: where it was read from, for messages.
        corrections: the scale/shift file (``scale_shift:``), resolved.
        calibration: what the schedule's change curves were measured on (None without curves).
    """

    kind: str
    steps: int
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<schedule>"
    corrections: Path | None = None
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        """Normalized form (what the manifest stores and the hash covers): no path, only content hashes."""
        out = {"kind": self.kind, "steps": self.steps, **{k: v for k, v in sorted(self.params.items())}}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out

    @property
    def cache(self) -> str:
        """``offset`` or ``output`` (``offset`` for kind full)."""
        return self.params.get("cache", "offset")

    @property
    def boundary(self) -> int | None:
        """Δ-DiT's outline/detail switch step b (resolved from the curves for ``boundary: auto``)."""
        return self.params.get("boundary")

    @property
    def interval(self) -> int | None:
        """Δ-DiT's N (None when ``target_speedup`` solves it for the model)."""
        return self.params.get("interval")

    @property
    def cached_blocks(self) -> int | None:
        """Δ-DiT's Nc (None when ``target_speedup`` solves it for the model)."""
        return self.params.get("cached_blocks")

    @property
    def target_speedup(self) -> float | None:
        return self.params.get("target_speedup")

    @property
    def threshold(self) -> float | None:
        """Block caching's δ (None for an explicit ``recompute`` table)."""
        return self.params.get("threshold")

    @property
    def recompute(self) -> dict[int, list[int]] | None:
        """Block caching's block -> steps that compute it (from the curves for a threshold)."""
        table = self.params.get("recompute")
        return None if table is None else {int(k): list(v) for k, v in table.items()}


# ---- reading ------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader that refuses a mapping key given twice (plain YAML keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges, where explicit keys may override
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, first)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_yaml_document(path: str | Path, error: type[Exception] = ValueError, what: str = "file") -> Any:
    """The YAML (or JSON) document of ``path``, a key given twice refused; every reading error is an ``error``
    naming the file (``what`` says what kind of file it should be)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist")
    text = read_utf8(path, error, what)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise error(f"{path}: line {exc.line}: key {exc.key!r} is given twice (first on line {exc.first}); "
                    f"keep one") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None


def read_schedule_mapping(path: str | Path) -> Any:
    """The YAML (or JSON) document of a schedule file, not yet validated; every reading error names the file."""
    return read_yaml_document(path, ScheduleError, "schedule file")


def load_schedule(path: str | Path) -> Schedule:
    """Read and validate a schedule.yaml (or .json); its paths are relative to its folder."""
    path = Path(path)
    return parse_schedule(read_schedule_mapping(path), source=str(path), base_dir=path.parent)


def parse_schedule(data: Any, source: str = "<schedule>", base_dir: Path | None = None) -> Schedule:
    """Validate a schedule given as a mapping (paths relative to ``base_dir``, default the working directory).
    The only validator: files, mappings and the typed configs all come through here."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"{source}: a schedule is a mapping with a 'kind' key, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ScheduleError(f"{source}: 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    unknown = sorted(set(data) - _KEYS[kind], key=str)
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), _KEYS[kind], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ScheduleError(
            f"{source}: unknown key {key!r} for kind {kind}{hint} (allowed: {', '.join(sorted(_KEYS[kind]))})"
        )
    steps = _int(data, "steps", source, minimum=1)
    if steps is None:
        raise ScheduleError(f"{source}: 'steps' is required (the number of sampling steps, e.g. steps: 20)")
    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    if kind == "full":
        return Schedule(kind, steps, {}, source)
    if kind == "adaptive":  # the policy of graphs.adaptive; the plan leaves the replays to the run
        return Schedule(kind, steps, adaptive_params(data, steps, source), source)
    if kind == "delta-dit":
        params, calibration = _delta_dit_params(data, steps, source, base_dir)
        return Schedule(kind, steps, params, source, calibration=calibration)
    params, corrections, calibration = _block_cache_params(data, steps, source, base_dir)
    return Schedule(kind, steps, params, source, corrections, calibration)


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


def _delta_dit_params(data: Mapping, steps: int, source: str,
                      base_dir: Path) -> tuple[dict[str, Any], Calibration | None]:
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
    return params, None


def _delta_dit_auto_boundary(data: Mapping, steps: int, source: str,
                             base_dir: Path) -> tuple[dict[str, Any], Calibration]:
    """``boundary: auto``: b from measured change curves (explicit interval and cached_blocks needed)."""
    interval = _int(data, "interval", source, minimum=1, maximum=steps)
    cached = _int(data, "cached_blocks", source, minimum=1)
    if data.get("curves") is None or interval is None or cached is None or "target_speedup" in data \
            or "boundary_fraction" in data:
        raise ScheduleError(f"{source}: 'boundary: auto' needs 'curves' (from `ditcache calibrate`), 'interval' and "
                            f"'cached_blocks', and no target_speedup or boundary_fraction")
    curves, digest = _curves(data, steps, source, base_dir)
    if cached > curves.num_blocks:
        raise ScheduleError(f"{source}: cached_blocks={cached} but the curves have {curves.num_blocks} blocks")
    params = {"boundary": boundary_from_curves(curves.mean, steps, interval, cached), "curves_sha256": digest,
              "interval": interval, "cached_blocks": cached, "cache": _cache_mode(data, source)}
    return params, curves.calibration


def _block_cache_params(data: Mapping, steps: int, source: str,
                        base_dir: Path) -> tuple[dict[str, Any], Path | None, Calibration | None]:
    recompute = data.get("recompute")
    threshold = _float(data, "threshold", source, 0.0, 1e6)
    if (recompute is None) == (threshold is None):
        raise ScheduleError(
            f"{source}: block-cache needs either 'recompute' (block -> list of steps that compute it) or "
            f"'threshold' with 'curves' (a change-curves file from `ditcache calibrate`)"
        )
    params: dict[str, Any] = {"cache": _cache_mode(data, source)}
    calibration = None
    if recompute is not None:
        if data.get("curves") is not None:
            raise ScheduleError(f"{source}: 'curves' is only used with 'threshold'; remove it")
        params["recompute"] = _recompute_table(recompute, steps, source)
    else:
        if data.get("curves") is None:
            raise ScheduleError(f"{source}: 'threshold' needs 'curves: PATH' (the change curves to threshold)")
        curves, digest = _curves(data, steps, source, base_dir)
        params.update(threshold=threshold, curves_sha256=digest,
                      recompute={i: threshold_recompute(row, threshold) for i, row in enumerate(curves.mean)})
        calibration = curves.calibration
    corrections = None
    if data.get("scale_shift") is not None:
        corrections = _path(data, "scale_shift", source, base_dir)
        if not corrections.is_file():
            raise ScheduleError(f"{source}: scale_shift file {str(corrections)!r} does not exist (paths are relative "
                                f"to the schedule's folder); make it with `ditcache fit-correction`")
        params["scale_shift_sha256"] = _sha256(corrections)
    return params, corrections, calibration


def _path(data: Mapping, key: str, source: str, base_dir: Path) -> Path:
    value = data[key]
    if not isinstance(value, (str, Path)) or not str(value):
        raise ScheduleError(f"{source}: {key!r} must be a file path (got {value!r})")
    return (base_dir / str(value)).resolve()


def _curves(data: Mapping, steps: int, source: str, base_dir: Path) -> tuple[ChangeCurves, str]:
    """The schedule's change curves, checked against its steps, and their sha256."""
    path = _path(data, "curves", source, base_dir)
    try:
        curves = ChangeCurves.load(path)
        curves.check_for_schedule(path, steps)
    except CurvesError as exc:
        raise ScheduleError(f"{source}: {exc}") from None
    return curves, _sha256(path)


def _sha256(path: Path) -> str:
    from .weights import sha256_file

    return sha256_file(path)


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


def full_schedule(steps: int) -> Schedule:
    """The uncached schedule of ``steps`` steps."""
    return Schedule("full", steps, {}, "<full>")
