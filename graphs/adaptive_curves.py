"""The adaptive calibration file (``ditcache calibrate --adaptive SIGNAL``): per step, the probe's relative change and
the full output's, measured on calibration runs, and the rescale polynomial fitted from them (TeaCache style)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .curves import read_utf8

ADAPTIVE_CURVES_FORMAT = "ditcache-adaptive-curves/1"


class AdaptiveCurvesError(ValueError):
    """An adaptive calibration file that is missing or malformed; the message says the fix."""


@dataclass(frozen=True)
class AdaptiveCurves:
    """Measured probe and output changes of an adaptive signal.

    Args:
        signal: ``first-block`` or ``modulated-input``.
        replay: the replayed block range [start, end) the probe belongs to.
        steps: sampling steps.
        probe: per step, the mean over rows and runs of the probe's relative L1 change from the step before (step 0:
            0).
        output: per step, the same for the full denoiser output.
        rescale: polynomial coefficients, highest power first, fitted output ≈ poly(probe) on every (row, step).
        count: (row, step) pairs the fit used.
        meta: model, weights_sha256, sampler, guidance, classes, seeds.
    """

    signal: str
    replay: tuple[int, int]
    steps: int
    probe: list[float]
    output: list[float]
    rescale: list[float]
    count: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": ADAPTIVE_CURVES_FORMAT, **asdict(self)}
        data["replay"] = list(self.replay)
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "AdaptiveCurves":
        path = Path(path)
        text = read_utf8(path, AdaptiveCurvesError, "adaptive calibration file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AdaptiveCurvesError(f"{path}: not valid JSON ({exc}); make it with `ditcache calibrate "
                                      f"--adaptive SIGNAL`") from None
        if not isinstance(data, dict) or data.get("format") != ADAPTIVE_CURVES_FORMAT:
            raise AdaptiveCurvesError(f"{path}: not an adaptive calibration file (format "
                                      f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                                      f"{ADAPTIVE_CURVES_FORMAT!r}); make it with `ditcache calibrate --adaptive`")
        try:
            return cls(data["signal"], (int(data["replay"][0]), int(data["replay"][1])), int(data["steps"]),
                       [float(v) for v in data["probe"]], [float(v) for v in data["output"]],
                       [float(c) for c in data["rescale"]], int(data["count"]), dict(data.get("meta", {})))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise AdaptiveCurvesError(f"{path}: malformed adaptive calibration file ({exc}); calibrate again") from None
