"""The benchmark runner end to end on benchmarks/configs/tiny.yaml (dit-tiny, random weights: correctness only)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from ditcache.benchmarks.bench_config import ConfigError, build_rows, load_config, parse_config
from ditcache.benchmarks.bench_report import COLUMNS, MD_HEADER
from ditcache.benchmarks.run_benchmarks import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "benchmarks" / "configs" / "tiny.yaml"
# stock pipeline, every eager row, one compiled row (ONNX Runtime: seconds to export; the AOT inductor packages are
# tested in tests/compiler/test_inductor_aot.py) and rows skipped as unavailable
ONLY = ["diffusers/", "eager/", "onnxruntime/fp32/delta-6", "onnxruntime/bf16/full-6", "tensorrt/"]
# measured in every row that ran (speedup/efficiency/fidelity vs full also need a full reference row)
MEASURED = ("latency_median_s", "latency_min_s", "latency_max_s", "latency_iqr_s", "per_step_median_ms",
            "gmacs_per_image", "mac_fraction", "theoretical_speedup", "speedup_vs_stock", "peak_rss_bytes",
            "sampling_peak_rss_bytes", "weights_bytes", "rest_bytes", "warmup_s", "fidelity_space")


def _md_cells(line: str) -> list[str]:
    cells, current, escaped = [], "", False
    for ch in line.strip()[1:-1]:
        if ch == "|" and not escaped:
            cells.append(current.strip())
            current = ""
        else:
            current += ch
        escaped = ch == "\\"
    return cells + [current.strip()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    out = root / "out"
    code = main(["--config", str(TINY), "--out-dir", str(out), "--cache-dir", str(root / "cache"),
                 "--only", *ONLY, "--repeats", "2", "--quiet"])
    return code, out


@pytest.mark.e2e
def test_tiny_config_end_to_end(tiny_run):
    code, out = tiny_run
    assert code == 0
    for name in ("results.csv", "results.json", "results.md", "speedup_vs_macs.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.tmp*"))  # atomic writes leave nothing behind
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] and document["command"].startswith("python -m ditcache.benchmarks.run_benchmarks")
    assert {"cpu", "cores", "versions", "date_utc"} <= set(document["machine"])
    rows = {r["id"]: r for r in document["rows"]}
    assert set(rows) == {"diffusers/fp32/full-6", "eager/fp32/full-6", "eager/fp32/delta-6", "eager/fp32/bc-6",
                         "onnxruntime/fp32/delta-6", "onnxruntime/bf16/full-6", "tensorrt/fp16/full-6"}
    for row in rows.values():
        assert set(COLUMNS) <= set(row), row["id"]  # every row has every field, None where not measured
        if row["status"] == "ok":
            missing = [f for f in MEASURED if row[f] is None]
            assert not missing, (row["id"], missing)
            assert row["latency_min_s"] <= row["latency_median_s"] <= row["latency_max_s"]
            assert len(row["runs_s"]) == 2
        else:
            assert row["status"].startswith("skipped: "), row["status"]
    assert "bfloat16" in rows["onnxruntime/bf16/full-6"]["status"]
    assert "TensorRT" in rows["tensorrt/fp16/full-6"]["status"]

    stock, full = rows["diffusers/fp32/full-6"], rows["eager/fp32/full-6"]
    assert full["psnr_vs_stock_db"] == "inf"  # ditcache's eager full schedule is DiTPipeline's computation
    assert stock["speedup_vs_stock"] == 1.0 and full["theoretical_speedup"] == 1.0
    for cached_id in ("eager/fp32/delta-6", "eager/fp32/bc-6"):
        cached = rows[cached_id]
        assert cached["theoretical_speedup"] > 1 and cached["mac_fraction"] < 1
        assert math.isfinite(cached["psnr_vs_full_db"]) and cached["cosine_vs_full"] < 1  # cached differs
        assert cached["full_reference"] == "eager/fp32/full-6"
        assert math.isclose(cached["efficiency"], cached["speedup_vs_full"] / cached["theoretical_speedup"])
        assert math.isclose(cached["profile_efficiency"], cached["profile_speedup"] / cached["theoretical_speedup"])
        assert len(cached["per_step_median_ms"]) > 1  # per-variant step times
    compiled = rows["onnxruntime/fp32/delta-6"]
    assert compiled["theoretical_speedup"] > 1 and math.isfinite(compiled["psnr_vs_stock_db"])
    assert compiled["warmup_s"] > 0 and "build_s" in compiled and compiled["granularity"] == "segment"
    assert any("no full-schedule row" in n for n in compiled["notes"])  # said, not extrapolated
    # the compiled cached run equals the eager cached run up to compiler rounding
    assert abs(compiled["psnr_vs_stock_db"] - rows["eager/fp32/delta-6"]["psnr_vs_stock_db"]) < 0.1

    with open(out / "results.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["id"] for r in table] == [r["id"] for r in document["rows"]]
    assert tuple(table[0]) == COLUMNS

    lines = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("|")]
    header, separator, body = _md_cells(lines[0]), _md_cells(lines[1]), [_md_cells(line) for line in lines[2:]]
    assert tuple(header) == MD_HEADER and all(set(c) == {"-"} for c in separator)
    assert all(len(cells) == len(header) for cells in body)
    assert [cells[0] for cells in body] == [r["id"] for r in document["rows"]]
    assert "AMD" in (out / "results.md").read_text() or document["machine"]["cpu"] in (out / "results.md").read_text()


@pytest.mark.e2e
def test_resume_reuses_measured_rows(tiny_run, tmp_path, capsys):
    code, out = tiny_run
    cache = out.parent / "cache"
    assert main(["--config", str(TINY), "--out-dir", str(tmp_path / "again"), "--cache-dir", str(cache),
                 "--only", "diffusers/", "--repeats", "2", "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    assert "reusing the measurement" in captured.err
    assert json.loads(captured.out)["rows"][0]["status"] == "ok"


def test_dry_run_lists_rows_and_skips(capsys):
    assert main(["--config", str(TINY), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "eager/fp32/delta-6" in text and "skipped: " in text


def test_config_errors_say_the_fix(tmp_path):
    cfg = load_config(TINY)
    rows = build_rows(cfg)
    assert rows[0].kind == "stock" and len({r.id for r in rows}) == len(rows)
    with pytest.raises(ConfigError, match="did you mean 'repeats'"):
        parse_config({"model": "dit-tiny", "random_weights": True, "repeat": 2, "schedules": {}, "matrix": []})
    with pytest.raises(ConfigError, match="not under 'schedules'"):
        parse_config({"model": "dit-tiny", "random_weights": True, "schedules": {"f": {"kind": "full", "steps": 2}},
                      "matrix": [{"backends": ["eager"], "schedules": ["g"]}]})
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_config({"model": "dit-tiny", "schedules": {"f": {"kind": "full", "steps": 2}},
                      "matrix": [{"backends": ["eager"], "schedules": ["f"]}]})


@pytest.mark.e2e
def test_time_budget_skips_rows_and_says_so(tiny_run, tmp_path):
    out = tmp_path / "out"
    cache = tiny_run[1].parent / "cache"
    assert main(["--config", str(TINY), "--out-dir", str(out), "--cache-dir", str(cache),
                 "--only", "eager/fp32/full-6", "--time-budget-s", "1e-9", "--quiet"]) == 0
    row = json.loads((out / "results.json").read_text())["rows"][0]
    assert row["status"].startswith("skipped: time budget")


def test_profile_speedup_uses_the_rows_own_full_steps():
    from ditcache.benchmarks.bench_report import profile_speedup

    row = {"steps": 4, "per_step_median_ms": {"full+rec-back": {"median_ms": 100.0, "count": 4},
                                              "back-skipped": {"median_ms": 25.0, "count": 4}}}
    assert profile_speedup(row) == 8 * 100.0 / (4 * 100.0 + 4 * 25.0)  # 1.6x: 8 calls at full cost vs measured
    assert profile_speedup({"steps": 4, "per_step_median_ms": {"back-skipped": {"median_ms": 1.0, "count": 2}}}) is None


def test_config_with_a_key_given_twice_is_refused(tmp_path):
    from ditcache.benchmarks.bench_config import ConfigError, load_config

    path = tmp_path / "dup.yaml"
    path.write_text("name: x\nmodel: dit-tiny\nmodel: dit-xl\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'model' is given twice \(first on line 2\)"):
        load_config(path)
