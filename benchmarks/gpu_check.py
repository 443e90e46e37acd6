"""The GPU check: every backend's CUDA path against eager fp32, then DiT-XL/2 256 timed, in at most 8 minutes.

Phases, each under a time guard (a phase, and every process in it, gets only what is left of ``--budget-s``;
what does not fit is recorded as skipped, and the result files are rewritten after every item):

1. **environment**: torch, CUDA and the device, diffusers, ONNX Runtime and its execution providers, TensorRT:
   what is there and what is missing (and what that skips).
2. **backend checks** (each in its own process, cheapest first): the tiny model's Δ-DiT plan (its four
   variants; ``--check-model`` for a bigger one) exported with export-engines (every graph validated against
   fp32 eager) and sampled through load_engines on the device; the final latents are compared with ditcache's
   eager fp32 sampling on the CPU. Eager on the device, ONNX Runtime's CUDA provider, inductor AOT (fp32; bf16
   with CUDA graphs), TensorRT, inductor JIT with CUDA graphs; a backend that is not installed (or cannot run
   here) is skipped with its reason.
3. **timing**: DiT-XL/2 256x256 (random weights), 50 DDIM steps, guidance 4, batch 1 and 8: the stock
   diffusers DiTPipeline in fp16 against ditcache compiled in bf16 (full and Δ-DiT
   schedules/dit-xl-delta-50.yaml), through benchmarks/run_benchmarks.py (each row its own process, export
   apart from latency, per-step times, fidelity against the stock pipeline). Stock rows of every batch first
   (nothing to compile), then the compiled rows batch by batch, each stage with its share of what is left (a
   row that outlives it is killed and says so).

``--dry-run`` runs all of it on the CPU with the tiny model and without the CUDA-only parts (CUDA graphs, the
CUDA provider), so the script is tested where no GPU is (tests/benchmarks/test_gpu_check.py).
Results: ``benchmarks/results/gpu-check-<device>/`` (results.json, results.md, timing-b<N>/).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ditcache.benchmarks.bench_report import machine_info, markdown_grid, write_json
from ditcache.benchmarks.run_benchmarks import default_cache_dir, run_worker
from ditcache.compiler.atomic import write_atomic

MODULE = "ditcache.benchmarks.gpu_check"
BUDGET_S = 480.0  # 8 minutes on one H100/H200, everything included
CHECK_SHARE = 0.35  # of the budget at most for the backend checks; the timing gets the rest
MARGIN_S = 15.0  # kept back for writing the results
CHECK_STEPS = 4
MIN_CHECK_S = 30.0  # a check is not started with less time left than this (skipped by the time guard instead)
MIN_TIMING_S = 30.0  # likewise a timing stage
STOCK_LIMIT_S = 150.0  # the stock pipeline's rows of one batch size (nothing to compile: well under a minute on a GPU)


@dataclass(frozen=True)
class Check:
    """One backend configuration whose device path is compared with eager fp32."""

    label: str
    backend: str
    precision: str
    options: dict[str, Any] = field(default_factory=dict)
    cuda_only: tuple[str, ...] = ()  # options dropped in the CPU dry run (and said so)


CHECKS = (  # cheapest first: the time guard drops the tail
    Check("eager fp32 (device baseline)", "eager", "fp32"),
    Check("ONNX Runtime CUDA provider fp32", "onnxruntime", "fp32", {"provider": "cuda"}, ("provider",)),
    Check("inductor AOT fp32", "inductor", "fp32"),
    Check("inductor AOT bf16, CUDA graphs", "inductor", "bf16", {"cuda_graphs": True}, ("cuda_graphs",)),
    Check("TensorRT fp16", "tensorrt", "fp16"),
    Check("inductor JIT fp32, CUDA graphs", "inductor-jit", "fp32", {"cuda_graphs": True}, ("cuda_graphs",)),
)


class Clock:
    """What is left of the budget."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - MARGIN_S - self.elapsed()


# ---- phase 1: environment ---------------------------------------------------------------------------------
def environment(device: str) -> dict[str, Any]:
    """What is installed and what is missing, with the consequence of each missing piece."""
    import importlib

    env: dict[str, Any] = {"python": sys.version.split()[0], "missing": []}
    import torch

    env["torch"] = torch.__version__
    env["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name(0)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["cuda"] = torch.version.cuda
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    elif device == "cuda":
        env["missing"].append("CUDA: torch.cuda.is_available() is False (no GPU, or a CPU-only torch): the CUDA "
                              "checks and the GPU timing cannot run")
    for name, consequence in (("diffusers", "nothing can run (every model is a diffusers module)"),
                              ("onnx", "the ONNX Runtime and TensorRT (ONNX path) checks are skipped"),
                              ("onnxscript", "ONNX export (torch.onnx dynamo exporter) fails"),
                              ("onnxruntime", "the ONNX Runtime check is skipped"),
                              ("tensorrt", "the TensorRT check is skipped"),
                              ("triton", "inductor cannot compile for CUDA")):
        try:
            env[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - absent or broken: say so and go on
            env[name] = None
            if name == "triton" and device != "cuda":
                continue
            env["missing"].append(f"{name} ({type(exc).__name__}: {exc}): {consequence}")
    if env.get("onnxruntime"):
        import onnxruntime

        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
        if device == "cuda" and "CUDAExecutionProvider" not in env["onnxruntime_providers"]:
            env["missing"].append("onnxruntime has no CUDAExecutionProvider (the CPU wheel; onnxruntime-gpu "
                                  "gives it): the ONNX Runtime CUDA check is skipped")
    return env


# ---- phase 2: backend checks ------------------------------------------------------------------------------
def check_schedule(num_blocks: int) -> dict[str, Any]:
    """A short Δ-DiT plan with its four variants (back- and front-range recording and replay)."""
    return {"kind": "delta-dit", "steps": CHECK_STEPS, "boundary": 2, "interval": 2,
            "cached_blocks": max(1, num_blocks // 2)}


def device_check(check: Check, device: str) -> tuple[Check, list[str]]:
    """The check as it runs on ``device``: on the CPU, its CUDA-only options are dropped (and named)."""
    if device == "cuda" or not check.cuda_only:
        return check, []
    options = {k: v for k, v in check.options.items() if k not in check.cuda_only}
    dropped = [f"{k}={check.options[k]}" for k in check.cuda_only if k in check.options]
    return Check(check.label, check.backend, check.precision, options), [
        f"CPU dry run: CUDA-only option(s) {', '.join(dropped)} dropped"]


def phase_check(job: dict[str, Any]) -> dict[str, Any]:
    """Worker: export the check's plan, sample through load_engines on the device, compare with eager fp32."""
    import torch
    from safetensors.torch import save_file

    from ditcache.compiler.backend import BuildSettings, get_backend
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.export_engines import ExportRequest, export_engines
    from ditcache.export.load import load_engines
    from ditcache.export.validate import TOLERANCES, compare
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.schedule import parse_schedule
    from ditcache.graphs.weights import load_model

    check, device, work = Check(**job["check"]), job["device"], Path(job["work"])
    # fp32 means fp32: cuDNN's default TF32 convolutions would move eager itself ~1e-3 away from the CPU reference
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    spec = get_spec(job["model"])
    schedule_data = check_schedule(spec.num_blocks)
    schedule_path = work / "schedule.yaml"
    schedule_path.parent.mkdir(parents=True, exist_ok=True)
    schedule_path.write_text(yaml.safe_dump(schedule_data))
    plan = plan_for(parse_schedule(schedule_data), spec)
    model, _ = load_model(spec, random_weights=True, seed=0)
    weights = work / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("pos_embed.pos_embed")},
              str(weights))
    request = SampleRequest((3,), CHECK_STEPS, 4.0, 0, "ddim")
    reference = sample_with_plan(eager_dispatcher(model.eval(), spec, plan), spec, request)  # fp32, CPU

    settings = BuildSettings(check.precision, device, dict(check.options))
    result: dict[str, Any] = {"status": "ok"}
    start = time.perf_counter()
    if check.backend == "eager":
        dispatcher = eager_dispatcher(model.to(device, settings.dtype).eval(), spec, plan)
    else:
        report = export_engines(ExportRequest(model=spec.name, schedule=str(schedule_path), out=str(work / "engines"),
                                              backend=check.backend, weights=str(weights), precision=check.precision,
                                              device=device, options=dict(check.options)), log=lambda m: None,
                                progress=False)
        result["export_s"] = report.seconds
        result["graphs"] = {g.name: g.validation for g in report.graphs}
        result["artifact_bytes"] = sum(g.bytes for g in report.graphs)
        dispatcher = load_engines(work / "engines", weights=str(weights), device=device).dispatcher
    result["load_s"] = time.perf_counter() - start
    sync = torch.cuda.synchronize if device == "cuda" else None
    dispatcher.sync = sync
    sample_with_plan(dispatcher, spec, request, dtype=settings.dtype, device=device)  # warm-up (JIT compiles)
    dispatcher.timing = True
    latents = sample_with_plan(dispatcher, spec, request, dtype=settings.dtype, device=device)
    result["step_ms"] = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in dispatcher.step_seconds.items()}
    agreement = compare((latents.float().cpu(),), (reference,))
    rel_tol, cos_tol = TOLERANCES[check.precision]
    result.update(agreement.as_dict(), rel_tolerance=rel_tol, cosine_tolerance=cos_tol,
                  backend_versions=get_backend(check.backend).versions())
    if agreement.rel_max_abs > rel_tol or agreement.cosine < cos_tol:
        result["status"] = (f"MISMATCH: final latents vs eager fp32: relative max-abs {agreement.rel_max_abs:.2e} "
                            f"(tolerance {rel_tol:.0e}), cosine {agreement.cosine:.6f} (tolerance {cos_tol})")
    return result


def _worker_env(device: str) -> dict[str, str]:
    """On the CPU (dry run) one thread per process: the tiny model gains nothing from more, and OpenMP threads
    spinning on a busy machine slow every op down."""
    env = dict(os.environ)
    if device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_checks(args, device: str, clock: Clock, work: Path, save) -> list[dict[str, Any]]:
    """Every check in its own process, each given what is left of the checks' share of the budget."""
    from ditcache.compiler.backend import BuildSettings, get_backend

    deadline = clock.elapsed() + CHECK_SHARE * clock.budget_s
    results: list[dict[str, Any]] = []
    for check in CHECKS:
        if args.backends and check.backend not in args.backends:
            continue
        run, notes = device_check(check, device)
        entry: dict[str, Any] = {"label": check.label, "backend": check.backend, "precision": check.precision,
                                 "options": run.options, "notes": notes}
        results.append(entry)
        try:
            reason = get_backend(check.backend).unavailable_reason(BuildSettings(check.precision, device,
                                                                                 dict(run.options)))
        except Exception as exc:  # noqa: BLE001 - a backend that cannot even be imported is unavailable
            reason = f"backend {check.backend!r} cannot be loaded: {type(exc).__name__}: {exc}"
        left = min(deadline - clock.elapsed(), clock.left())
        if reason:
            entry["status"] = f"skipped: {reason}"
        elif left < MIN_CHECK_S:
            entry["status"] = (f"skipped: time guard ({max(left, 0):.0f} s left of the checks' "
                               f"{CHECK_SHARE * clock.budget_s:.0f} s; a check gets at least {MIN_CHECK_S:.0f} s)")
        else:
            _progress(f"[{clock.elapsed():5.0f} s] check: {check.label} on {device} (up to {left:.0f} s)", args.quiet)
            folder = work / "checks" / re.sub(r"[^A-Za-z0-9]+", "-", check.label).strip("-")
            job = {"check": asdict(run), "device": device, "model": args.check_model, "work": str(folder)}
            result = run_worker("check", job, folder, left, "", args.quiet, _worker_env(device), module=MODULE)
            entry.update(result)
            if entry["status"].startswith("failed") and "killed after" in entry["status"]:
                entry["status"] = f"failed: time guard: killed after {left:.0f} s (log {folder / 'check.log'})"
        _progress(f"[{clock.elapsed():5.0f} s]   {check.label}: {entry['status']}", args.quiet)
        save()
    return results


# ---- phase 3: timing --------------------------------------------------------------------------------------
def timing_config(args, images: int, device: str, left: float) -> dict[str, Any]:
    """A run_benchmarks config for one batch size: stock fp16 full, then ditcache compiled bf16 full and Δ-DiT."""
    repo = Path(__file__).resolve().parents[1]
    if args.dry_run:
        delta: Any = {"kind": "delta-dit", "steps": args.steps, "boundary": args.steps // 2, "interval": 2,
                      "cached_blocks": 2}
    else:
        delta = str(repo / "schedules" / f"dit-xl-delta-{args.steps}.yaml")
    classes = [207, 360, 387, 974, 88, 979, 417, 279, 130, 812, 33, 99, 151, 248, 292, 388][:images]
    options = {args.timing_backend: timing_options(args)}
    return {
        "name": "gpu-check-timing",  # one name for every batch: the runs share engine and compile caches
        "description": (f"{args.model} {'(dry run on the CPU)' if args.dry_run else ''} {images} image(s), "
                        f"{args.steps} DDIM steps, guidance 4; stock diffusers DiTPipeline fp16 vs ditcache "
                        f"{args.timing_backend} bf16 {timing_options(args) or ''} (full and Δ-DiT); time budget "
                        f"{left:.0f} s"),
        "model": args.model, "random_weights": True, "device": device, "threads": 1 if args.dry_run else None,
        "images": images, "classes": classes,
        "guidance": 4.0, "scheduler": "ddim", "seed": 0, "warmup": "variants", "repeats": args.repeats,
        "step_timing": "separate", "granularity": args.timing_granularity, "validate": False,
        "row_timeout_s": max(left, 1.0), "time_budget_s": max(left - 5, 1.0), "time_limit_s": max(left, 1.0),
        "backend_options": options,
        "schedules": {f"full-{args.steps}": {"kind": "full", "steps": args.steps}, f"delta-{args.steps}": delta},
        "baseline": {"precision": "fp16", "schedules": [f"full-{args.steps}"]},
        "matrix": [{"backends": [args.timing_backend], "precisions": ["bf16"],
                    "schedules": [f"full-{args.steps}", f"delta-{args.steps}"]}],
    }


def timing_options(args) -> dict[str, Any]:
    """--timing-option KEY=VALUE pairs; without any, CUDA graphs for the inductor backends on the GPU."""
    if args.timing_option is None:
        return {"cuda_graphs": True} if not args.dry_run and args.timing_backend in ("inductor", "inductor-jit") else {}
    out = {}
    for pair in args.timing_option:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"gpu_check: error: --timing-option {pair!r} is not KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def run_timing(args, device: str, clock: Clock, work: Path, out: Path, save) -> list[dict[str, Any]]:
    """run_benchmarks in stages: the stock rows of every batch size first (cheap: nothing to compile), then the
    compiled rows of each batch (``--resume`` keeps the stock row, so speedups are against it), each stage with
    its share of what is left; every stage rewrites the batch's results."""
    entries = {images: {"images": images, "folder": f"timing-b{images}", "stages": []} for images in args.batches}
    stages = [(images, "stock") for images in args.batches] + [(images, "compiled") for images in args.batches]
    for i, (images, what) in enumerate(stages):
        entry = entries[images]
        compiled_left = sum(1 for _, w in stages[i:] if w == "compiled")
        left = min(clock.left(), STOCK_LIMIT_S) if what == "stock" else clock.left() / compiled_left
        stage: dict[str, Any] = {"rows": what}
        entry["stages"].append(stage)
        if left < MIN_TIMING_S:
            stage["status"] = (f"skipped: time guard ({max(left, 0):.0f} s left for it; a stage gets at least "
                               f"{MIN_TIMING_S:.0f} s)")
        else:
            config = work / f"timing-b{images}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(timing_config(args, images, device, left), sort_keys=False))
            command = [sys.executable, "-m", "ditcache.benchmarks.run_benchmarks", "--config", str(config),
                       "--out-dir", str(out / entry["folder"]), "--cache-dir", str(work / "bench-cache"), "--quiet",
                       *(["--backends", "diffusers"] if what == "stock" else ["--resume"])]
            _progress(f"[{clock.elapsed():5.0f} s] timing: batch {images}, {what} rows (up to {left:.0f} s)",
                      args.quiet)
            log = work / f"timing-b{images}-{what}.log"
            try:
                with open(log, "w") as handle:
                    code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                          timeout=left + 10).returncode
                stage["status"] = "ok" if code == 0 else f"failed: run_benchmarks exited with {code} (log {log})"
            except subprocess.TimeoutExpired:
                stage["status"] = f"failed: time guard: killed after {left + 10:.0f} s (rows so far kept; log {log})"
        entry["status"] = "; ".join(f"{s['rows']}: {s['status']}" for s in entry["stages"])
        table = out / entry["folder"] / "results.json"
        if table.is_file():
            rows = json.loads(table.read_text())["rows"]
            entry["rows"] = [{k: r.get(k) for k in ("id", "status", "latency_median_s", "speedup_vs_stock",
                                                     "speedup_vs_full", "per_step_median_ms", "psnr_vs_stock_db",
                                                     "build_s", "warmup_s", "cuda_peak_allocated_bytes")}
                             for r in rows]
        _progress(f"[{clock.elapsed():5.0f} s]   batch {images}, {what}: {stage['status']}", args.quiet)
        save()
    return list(entries.values())


# ---- report -----------------------------------------------------------------------------------------------
def device_slug(env: dict[str, Any], dry_run: bool) -> str:
    """``nvidia-h200`` from torch.cuda.get_device_name; ``cpu-dry-run`` without a device."""
    if dry_run or not env.get("device_name"):
        return "cpu-dry-run"
    return re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")


def write_markdown(path: Path, document: dict[str, Any]) -> None:
    env = document["environment"]
    lines = [f"# GPU check: {env.get('device_name') or 'no GPU (CPU dry run)'}", "",
             f"- **command**: `{document['command']}`",
             f"- **date**: {document['machine']['date_utc']}; total {document['total_s']:.0f} s of a "
             f"{document['budget_s']:.0f} s budget; complete: {document['complete']}",
             f"- **versions**: python {env['python']}, torch {env['torch']} (CUDA {env.get('cuda')}), diffusers "
             f"{env.get('diffusers')}, onnxruntime {env.get('onnxruntime')} (providers "
             f"{env.get('onnxruntime_providers')}), tensorrt {env.get('tensorrt')}, triton {env.get('triton')}",
             f"- **checks**: {document['check_note']}"]
    lines += [f"- **MISSING**: {m}" for m in env["missing"]]
    lines += ["", "## Backends against eager fp32", ""]
    cells = [[c["label"], c["status"], "–" if c.get("rel_max_abs") is None else f"{c['rel_max_abs']:.2e}",
              "–" if c.get("cosine") is None else f"{c['cosine']:.6f}",
              "–" if c.get("export_s") is None else f"{c['export_s']:.1f}",
              "; ".join(f"{k}: {v:.3g}" for k, v in (c.get("step_ms") or {}).items()) or "–",
              "; ".join(c.get("notes") or [])] for c in document["checks"]]
    lines += [markdown_grid(("check", "status", "rel. max-abs", "cosine", "export s", "step ms", "notes"), cells)]
    lines += ["", "## DiT-XL/2 timing" if not document["dry_run"] else "## Timing (dry run: tiny model, CPU)", ""]
    for t in document["timing"]:
        lines.append(f"### batch {t['images']}: {t['status']} (full table: `{t['folder']}/results.md`)")
        lines.append("")
        if t.get("rows"):
            lines.append(markdown_grid(("row", "status", "latency s", "× vs stock", "× vs full", "PSNR vs stock dB"), [
                [r["id"], r["status"], "–" if r["latency_median_s"] is None else f"{r['latency_median_s']:.3f}",
                 "–" if r["speedup_vs_stock"] is None else f"{r['speedup_vs_stock']:.2f}",
                 "–" if r["speedup_vs_full"] is None else f"{r['speedup_vs_full']:.2f}",
                 "–" if not isinstance(r["psnr_vs_stock_db"], (int, float)) else f"{r['psnr_vs_stock_db']:.1f}"]
                for r in t["rows"]]))
            lines.append("")
    write_atomic(path, "\n".join(lines) + "\n", mkdir=True)


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ditcache.benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: bash benchmarks/gpu_check.sh   (installs what it can, then "
                                            "runs this)\n         python -m ditcache.benchmarks.gpu_check --dry-run")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny model, without the CUDA-only parts (what the tests run)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="whole run (default: %(default)s)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/gpu-check-<device>)")
    parser.add_argument("--work", help="exports, caches and logs (default: $DITCACHE_BENCH_CACHE or "
                                       "~/.cache/ditcache/bench, then gpu-check-<device>)")
    parser.add_argument("--backends", nargs="+", help="only the checks of these backends")
    parser.add_argument("--check-model", default="dit-tiny",
                        help="model of the backend checks (default: %(default)s: wiring and numerics of every path "
                             "in seconds; the timing's PSNR vs the stock pipeline checks DiT-XL/2 itself)")
    parser.add_argument("--model", help="model timed (default: dit-xl; dry run: dit-tiny)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps of the timing (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="images per call (default: 1 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per timing row (default: %(default)s)")
    parser.add_argument("--timing-backend", default="inductor",
                        help="ditcache's compiled backend in the timing (default: %(default)s = AOTInductor)")
    parser.add_argument("--timing-option", nargs="*", metavar="KEY=VALUE",
                        help="backend options of the timing rows (default on the GPU for inductor: cuda_graphs=true; "
                             "give the flag with nothing after it for none)")
    parser.add_argument("--timing-granularity", choices=("variant", "segment"), default="variant",
                        help="engine granularity of the timing rows (segment compiles about 4x fewer blocks for a "
                             "Δ-DiT plan, variant runs fastest; default: %(default)s)")
    parser.add_argument("--skip-timing", action="store_true", help="environment and backend checks only")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # worker mode (run_benchmarks.run_worker)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.phase:
        from ditcache.benchmarks.bench_worker import run_phase

        if args.phase != "check" or not args.job or not args.result:
            print("gpu_check: error: worker mode is --phase check --job JOB --result OUT", file=sys.stderr)
            return 2
        return run_phase(phase_check, json.loads(Path(args.job).read_text()), Path(args.result))
    device = "cpu" if args.dry_run else "cuda"
    args.model = args.model or ("dit-tiny" if args.dry_run else "dit-xl")
    if not args.dry_run and args.steps not in (20, 50):
        print("gpu_check: error: --steps must be 20 or 50 on the GPU (schedules/dit-xl-delta-<steps>.yaml)",
              file=sys.stderr)
        return 2
    clock = Clock(args.budget_s)
    env = environment(device)
    out = Path(args.out or Path("benchmarks") / "results" / f"gpu-check-{device_slug(env, args.dry_run)}")
    work = Path(args.work) if args.work else default_cache_dir() / out.name
    document: dict[str, Any] = {
        "command": "python -m ditcache.benchmarks.gpu_check " + shlex.join(argv), "dry_run": args.dry_run,
        "budget_s": args.budget_s, "complete": False, "machine": machine_info(device), "environment": env,
        "check_note": (f"{args.check_model} (random weights), {CHECK_STEPS}-step Δ-DiT plan "
                       f"{check_schedule(_blocks(args.check_model))}, 1 image, guidance 4, on {device}; every "
                       "graph validated at export against fp32 eager, then the final latents of load_engines + "
                       "sampling against ditcache's eager fp32 sampling on the CPU (export/validate.py tolerances "
                       "of the check's precision)"),
        "checks": [], "timing": [], "total_s": 0.0,
    }

    def save() -> None:
        document["total_s"] = clock.elapsed()
        write_json(out / "results.json", document)
        write_markdown(out / "results.md", document)

    for line in env["missing"]:
        _progress(f"MISSING: {line}", args.quiet)
    save()
    if env.get("diffusers") is None or (device == "cuda" and not env["cuda_available"]):
        _progress("gpu_check: cannot run the checks (see MISSING above); wrote the environment report", args.quiet)
        document["complete"] = True
        save()
        return 1
    document["checks"] = run_checks(args, device, clock, work, save)
    if not args.skip_timing:
        document["timing"] = run_timing(args, device, clock, work, out, save)
    document["complete"] = True
    save()
    _progress(f"gpu_check: wrote {out}/results.md, results.json ({clock.elapsed():.0f} s)", args.quiet)
    bad = [c for c in document["checks"] if c["status"].startswith(("failed", "MISMATCH"))]
    bad += [s for t in document["timing"] for s in t["stages"] if s["status"].startswith("failed")]
    return 1 if bad else 0


def _blocks(model: str) -> int:
    from ditcache.graphs.registry import get_spec

    return get_spec(model).num_blocks


if __name__ == "__main__":
    sys.exit(main())
