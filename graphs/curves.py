"""The change-curves file (``ditcache calibrate``'s output, a schedule's ``curves:``): its format, its one reader,
and the calibration identity it carries."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

CURVES_FORMAT = "ditcache-curves/1"
_KEYS = ("format", "num_blocks", "steps", "mean", "std", "count", "meta")


class CurvesError(ValueError):
    """A curves file that is missing, malformed, or measured for something else; the message says the fix."""


def read_utf8(path: Path, error: type[ValueError], what: str) -> str:
    """The text of ``path``; a missing, unreadable or non-UTF-8 file raises ``error`` naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start:exc.start + 1]!r}); a {what} is "
                    f"a text file: is this the right path?") from None


@dataclass(frozen=True)
class Calibration:
    """What a schedule's change curves were measured on: a plan for another model, or sampling with another sampler
    or guidance, is refused.

    Args:
        model: registry name of the calibrated model (None: the curves do not say).
        sampler: sampler short name the curves were measured with (``ddim``, ...).
        guidance: classifier-free guidance scale the curves were measured with.
        num_blocks: blocks the curves have (one row each).
    """

    model: str | None
    sampler: str | None
    guidance: float | None
    num_blocks: int

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], num_blocks: int) -> "Calibration":
        return cls(meta.get("model"), meta.get("sampler"), meta.get("guidance"), num_blocks)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """Inverse of :meth:`to_dict` (what a normalized schedule stores)."""
        return cls(data.get("model"), data.get("sampler"), data.get("guidance"), int(data["num_blocks"]))

    def to_dict(self) -> dict[str, Any]:
        """The normalized form: known fields only, ``num_blocks`` always."""
        known = {"model": self.model, "sampler": self.sampler, "guidance": self.guidance}
        return {k: v for k, v in known.items() if v is not None} | {"num_blocks": self.num_blocks}

    def model_mismatch(self, model: str, num_blocks: int) -> str | None:
        """Why a plan for ``model`` (``num_blocks`` blocks) must be refused, or None."""
        if self.model is not None and self.model != model:
            return (f"its curves were calibrated on {self.model}, not {model}: use it with --model {self.model}, or "
                    f"calibrate {model} (`ditcache calibrate --model {model}`) and make a schedule from those curves")
        if self.num_blocks != num_blocks:
            return (f"its curves were measured on a model with {self.num_blocks} blocks, {model} has {num_blocks}; "
                    f"calibrate this model (`ditcache calibrate --model {model}`)")
        return None

    def sampling_mismatch(self, sampler: str | None = None, guidance: float | None = None) -> str | None:
        """Why sampling with ``sampler`` / ``guidance`` (None: not known yet) must be refused, or None."""
        for key, flag, calibrated, asked in (("sampler", "scheduler", self.sampler, sampler),
                                             ("guidance", "guidance", self.guidance, guidance)):
            if calibrated is not None and asked is not None and calibrated != asked:
                return (f"its curves were calibrated with {key} {calibrated!r}, the request uses {asked!r}; sample "
                        f"with --{flag} {calibrated}, or calibrate again with --{flag} {asked}")
        return None


@dataclass
class ChangeCurves:
    """``mean[i][s]``: average over samples of ‖F_i(s) − F_i(s−1)‖₁ / ‖F_i(s)‖₁ (``s = 0`` is 0).

    Args:
        num_blocks, steps: the curves' shape.
        mean, std: per block, per step, over ``count`` samples (every row of the model batch, the
            guidance's unconditional half included).
        count: samples per cell.
        meta: what the curves belong to (model, weights, sampler, guidance, classes, seeds; ``measured`` when
            the rows are other modules than the blocks).
    """

    num_blocks: int
    steps: int
    mean: list[list[float]]
    std: list[list[float]] = field(default_factory=list)
    count: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration(self) -> Calibration:
        return Calibration.from_meta(self.meta, self.num_blocks)

    def to_json(self) -> str:
        """The file's text (compiler.calibration.curves.save_curves writes it atomically)."""
        return json.dumps({"format": CURVES_FORMAT, **asdict(self)}, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ChangeCurves":
        """Read and check a curves file (the only reader of the format)."""
        path = Path(path)
        if not path.is_file():
            raise CurvesError(f"curves file {str(path)!r} does not exist; make one with `ditcache calibrate`")
        text = read_utf8(path, CurvesError, "curves file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CurvesError(f"{path}: not valid JSON ({exc}); make the curves with `ditcache calibrate`") from None
        if not isinstance(data, Mapping) or data.get("format") != CURVES_FORMAT:
            raise CurvesError(f"{path}: not a ditcache curves file (expected format {CURVES_FORMAT!r}); make one "
                              f"with `ditcache calibrate`")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            raise CurvesError(f"{path}: unknown key {unknown[0]!r} (a curves file has {', '.join(_KEYS)})")
        steps = data.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CurvesError(f"{path}: 'steps' must be an integer >= 1 (got {steps!r})")
        mean = _rows(path, data, "mean", steps)
        if not mean:
            raise CurvesError(f"{path}: 'mean' has no blocks")
        num_blocks = data.get("num_blocks", len(mean))
        if num_blocks != len(mean):
            raise CurvesError(f"{path}: 'num_blocks' is {num_blocks!r} but 'mean' has {len(mean)} rows")
        std = _rows(path, data, "std", steps) if data.get("std") else []
        if std and len(std) != len(mean):
            raise CurvesError(f"{path}: 'std' has {len(std)} rows, 'mean' {len(mean)}")
        count = data.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CurvesError(f"{path}: 'count' must be an integer >= 0 (got {count!r})")
        meta = data.get("meta") or {}
        if not isinstance(meta, Mapping):
            raise CurvesError(f"{path}: 'meta' must be a mapping (got {type(meta).__name__})")
        return cls(len(mean), steps, mean, std, count, dict(meta))

    def check_for_schedule(self, path: str | os.PathLike, steps: int) -> None:
        """Refuse curves a schedule cannot use: other step counts, or rows that are not the model's blocks."""
        if self.steps != steps:
            raise CurvesError(f"{path}: curves were measured for {self.steps} steps, the schedule has {steps}; "
                              f"calibrate again with --steps {steps}")
        if "measured" in self.meta:
            raise CurvesError(f"{path}: these curves measure {self.meta['measured']}; calibrate the model's blocks "
                              f"with `ditcache calibrate`")


def _rows(path: Path, data: Mapping[str, Any], key: str, steps: int) -> list[list[float]]:
    rows = data.get(key)
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == steps for r in rows):
        raise CurvesError(f"{path}: {key!r} must be a list of per-block lists of {steps} values")
    out = []
    for i, row in enumerate(rows):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
            raise CurvesError(f"{path}: {key}[{i}] holds a value that is not a finite number")
        out.append([float(v) for v in row])
    return out
