"""benchmarks/gpu_check.py as a CPU dry run (tiny model, no CUDA parts), its time guard and its report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from ditcache.benchmarks.bench_config import build_rows, parse_config
from ditcache.benchmarks.gpu_check import CHECKS, Check, build_parser, device_check, device_slug, main, timing_config

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "out"
    code = main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--quiet", *extra])
    return code, json.loads((out / "results.json").read_text())


def test_dry_run_checks(tmp_path):
    """The eager check runs in its own process and agrees with eager fp32; TensorRT is skipped with its reason."""
    code, document = _run(tmp_path, "--backends", "eager", "tensorrt", "--skip-timing")
    assert code == 0 and document["complete"] and document["dry_run"]
    checks = {c["backend"]: c for c in document["checks"]}
    assert set(checks) == {"eager", "tensorrt"}
    eager = checks["eager"]
    assert eager["status"] == "ok" and eager["cosine"] > 0.99999 and eager["rel_max_abs"] <= eager["rel_tolerance"]
    assert set(eager["step_ms"]) == {"full+rec-back", "back-skipped", "full+rec-front", "front-skipped"}
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert checks["tensorrt"]["status"].startswith("skipped: ") and "TensorRT" in checks["tensorrt"]["status"]
        assert any("tensorrt" in m for m in document["environment"]["missing"])
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## Backends against eager fp32" in markdown and "eager fp32 (device baseline) | ok" in markdown


def test_time_guard_skips_what_does_not_fit(tmp_path):
    code, document = _run(tmp_path, "--budget-s", "40", "--backends", "eager", "onnxruntime")
    assert code == 0
    assert len(document["checks"]) == 2
    assert all(c["status"].startswith("skipped: time guard (") and "checks' 14 s" in c["status"]
               for c in document["checks"])
    assert [t["images"] for t in document["timing"]] == [1, 8]
    assert [[s["rows"] for s in t["stages"]] for t in document["timing"]] == [["stock", "compiled"]] * 2
    assert all(s["status"].startswith("skipped: time guard (") for t in document["timing"] for s in t["stages"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_without_cuda_it_says_so(tmp_path):
    out = tmp_path / "out"
    assert main(["--out", str(out), "--work", str(tmp_path / "work"), "--quiet"]) == 1
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] and not document["checks"] and not document["timing"]
    assert any(m.startswith("CUDA: torch.cuda.is_available() is False") for m in document["environment"]["missing"])


def test_cpu_dry_run_drops_cuda_only_options():
    jit = next(c for c in CHECKS if c.backend == "inductor-jit")
    run, notes = device_check(jit, "cpu")
    assert run.options == {} and notes == ["CPU dry run: CUDA-only option(s) cuda_graphs=True dropped"]
    assert device_check(jit, "cuda") == (jit, [])
    plain = Check("eager", "eager", "fp32")
    assert device_check(plain, "cpu") == (plain, [])
    assert device_slug({"device_name": "NVIDIA H200"}, False) == "nvidia-h200"
    assert device_slug({"device_name": "NVIDIA H200"}, True) == "cpu-dry-run"
    assert {c.backend for c in CHECKS} == {"eager", "inductor", "inductor-jit", "onnxruntime", "tensorrt"}


@pytest.mark.parametrize("dry_run", [False, True])
def test_timing_config_rows(dry_run):
    """The timing asks run_benchmarks for the stock pipeline in fp16 and ditcache compiled in bf16, full and Δ-DiT."""
    args = build_parser().parse_args(["--dry-run"] if dry_run else [])
    args.model = "dit-tiny" if dry_run else "dit-xl"
    cfg = parse_config(timing_config(args, 8, "cpu" if dry_run else "cuda", 300.0), base_dir=REPO)
    rows = build_rows(cfg)
    assert [r.id for r in rows] == ["diffusers/fp16/full-50", "inductor/bf16/full-50", "inductor/bf16/delta-50"]
    assert all(r.steps == 50 and len(r.class_labels) == 8 for r in rows)
    assert cfg.time_limit_s == 300.0 and cfg.time_budget_s == 295.0
    if not dry_run:
        assert rows[2].schedule_path.endswith("schedules/dit-xl-delta-50.yaml")
        assert rows[1].options == {"cuda_graphs": True}  # the GPU default for inductor
    else:
        assert rows[1].options == {}
    args.timing_option = ["cuda_graphs=false"]
    assert build_rows(parse_config(timing_config(args, 1, "cpu", 300.0), base_dir=REPO))[1].options == {
        "cuda_graphs": False}


def test_shell_script_syntax():
    assert subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_check.sh")]).returncode == 0


@pytest.mark.slow
def test_dry_run_everything(tmp_path):
    """The whole dry run: ONNX Runtime's check (its CUDA provider dropped) and the timing at two batch sizes."""
    code, document = _run(tmp_path, "--backends", "eager", "onnxruntime", "tensorrt", "--timing-backend", "eager",
                          "--steps", "6", "--batches", "1", "2", "--repeats", "1")
    assert code == 0
    ort = next(c for c in document["checks"] if c["backend"] == "onnxruntime")
    assert ort["status"] == "ok" and ort["options"] == {} and ort["export_s"] > 0
    assert [t["images"] for t in document["timing"]] == [1, 2]
    for timing in document["timing"]:
        assert timing["status"] == "stock: ok; compiled: ok"
        rows = {r["id"]: r for r in timing["rows"]}
        assert set(rows) == {"diffusers/fp16/full-6", "eager/bf16/full-6", "eager/bf16/delta-6"}
        assert all(r["status"] == "ok" and r["latency_median_s"] > 0 for r in rows.values())
        assert (tmp_path / "out" / timing["folder"] / "results.md").is_file()
