"""benchmarks/stream_corrections.py end to end on sd3-tiny (one weights seed, no guidance, one held-out seed): the
three runs measured on both image sets, the files written with the command that made them."""

from __future__ import annotations

import json

import pytest

from ditcache.benchmarks import stream_corrections


@pytest.mark.e2e
def test_stream_corrections_smoke(tmp_path):
    out = tmp_path / "res"
    assert stream_corrections.main(["--weights-seeds", "0", "--guidance", "1", "--eval-seeds", "1",
                                    "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    (case,) = record["cases"]
    assert set(case["results"]) == {"fitted", "held-out"} and case["results"]["held-out"]["images"] == 2
    for row in case["results"].values():
        assert set(row) == {"images", *stream_corrections.KINDS}
        assert all(0 < row[k]["psnr_db"] < float("inf") for k in stream_corrections.KINDS)
    assert record["command"].startswith("python benchmarks/stream_corrections.py --weights-seeds 0")
    assert "| 0 | 1 | fitted (2) |" in (out / "results.md").read_text()
