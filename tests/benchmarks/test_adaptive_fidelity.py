"""benchmarks/adaptive_fidelity.py end to end on dit-tiny (random weights, 6 steps): every method measured, the
adaptive rows spend what their record says, the files written."""

from __future__ import annotations

import json

import pytest

from ditcache.benchmarks import adaptive_fidelity


@pytest.mark.e2e
def test_adaptive_fidelity_smoke(tmp_path):
    out = tmp_path / "res"
    assert adaptive_fidelity.main(["--out", str(out), "--images", "2", "--targets", "1.2", "--model", "dit-tiny",
                                   "--random-weights", "--steps", "6", "--max-consecutive", "2"]) == 0
    result = json.loads((out / "adaptive_fidelity.json").read_text())
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("block-cache") and len(methods) == 5
    for row in result["rows"]:
        if "error" in row:
            continue
        assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"] and row["psnr_mean_db"] > 0
    assert result["random_weights"] and "| 1.2 |" in (out / "adaptive_fidelity.md").read_text()
    assert result["command"].startswith("python -m ditcache.benchmarks.adaptive_fidelity --out")
