"""How much faster than the stock pipeline, and what it costs in quality: one command, one machine.

Compares, per config (benchmarks/configs/*.yaml), the stock diffusers ``DiTPipeline`` (eager), ditcache's
eager runtime and every compiled backend x precision x schedule (full, Δ-DiT, block caching). Every row
runs in its own process (its peak memory is its own); compiled rows are exported with export-engines in a
separate process first, so build/compile time is reported apart from latency. Writes
``benchmarks/results/<config-name>/``: results.csv, results.json, results.md, speedup_vs_macs.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .bench_config import BenchConfig, ConfigError, RowSpec, build_rows, load_config
from .bench_peers import PEERS_NOTE
from .bench_report import (
    COLUMNS, derive, latency_stats, machine_info, markdown_table, plot_speedup, step_stats, write_csv, write_json,
    write_markdown,
)

EXAMPLES = """examples:
  python -m ditcache.benchmarks.run_benchmarks --config benchmarks/configs/cpu-dit-xl.yaml
  python -m ditcache.benchmarks.run_benchmarks --config benchmarks/configs/tiny.yaml --json
  python -m ditcache.benchmarks.run_benchmarks --config benchmarks/configs/cpu-dit-xl.yaml --dry-run
  python -m ditcache.benchmarks.run_benchmarks --config benchmarks/configs/tiny.yaml --backends eager inductor
  python -m ditcache.benchmarks.run_benchmarks --config benchmarks/configs/gpu-dit-xl.yaml --resume
"""

FIDELITY_NOTE = ("final latents (before any VAE decode) of each row against its full reference (same backend, "
                 "precision, seed and step count) and against the stock pipeline; PSNR uses data range = "
                 "max - min of the reference latents; cosine over all elements")


def baseline_note(model: str) -> str:
    """What the stock row runs: the family's own diffusers pipeline (graphs.family StockPipeline)."""
    from ditcache.graphs.registry import get_spec

    spec = get_spec(model)
    text = " on the same prompt embeddings (no text encoders)" if spec.text_conditioned else ""
    return (f"stock = diffusers {spec.family_record.stock.class_name}.__call__{text}, unmodified, eager, built from "
            "the same transformer weights and a compiler.runtime.sampling.make_scheduler scheduler, with "
            "a stand-in VAE whose decode returns the latents (VAE decode excluded from every row)")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DITCACHE_BENCH_CACHE", Path.home() / ".cache" / "ditcache" / "bench"))


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---- subprocesses -----------------------------------------------------------------------------------------
def run_worker(phase: str, job: dict[str, Any], work: Path, timeout: float, prefix: str, quiet: bool,
               env: dict[str, str] | None = None, module: str = "ditcache.benchmarks.bench_worker") -> dict[str, Any]:
    """One worker process (``python -m <module> --phase ...``); its ``bench:`` lines become progress, everything
    goes to ``<work>/<phase>.log``."""
    work.mkdir(parents=True, exist_ok=True)
    job_file, result_file, log_file = work / f"{phase}.job.json", work / f"{phase}.result.json", work / f"{phase}.log"
    result_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps(job, indent=2, default=str))
    command = [sys.executable, "-m", module, "--phase", phase, "--job", str(job_file),
               "--result", str(result_file)]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True, env=env)

        def pump():
            for line in process.stderr:
                log.write(line)
                log.flush()
                if line.startswith("bench: "):
                    _progress(f"{prefix}   {line[7:].rstrip()}", quiet)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            reader.join(5)
            return {"status": f"failed: {phase} killed after {timeout:.0f} s (row_timeout_s or the config's "
                              f"time_limit_s; see {log_file})"}
        reader.join(5)
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        tail = log_file.read_text().strip().splitlines()[-1:] if log_file.is_file() else []
        result = {"status": f"failed: worker exited with {process.returncode}: {' '.join(tail)[:300]}"}
    result["wall_s"] = time.perf_counter() - start
    return result


def ensure_weights(cfg: BenchConfig, cache: Path, quiet: bool) -> tuple[str, str]:
    """The weights file every row loads, and a note for the header. Random weights are created once."""
    if not cfg.random_weights:
        return str(cfg.weights), f"{cfg.weights}"
    path = cache / "weights" / f"{cfg.model}-random-seed0.safetensors"
    if not path.is_file():
        _progress(f"creating random {cfg.model} weights once: {path}", quiet)
        result = run_worker("weights", {"model": cfg.model, "seed": 0, "out": str(path)}, cache / "weights",
                            cfg.row_timeout_s, "", quiet)
        if result["status"] != "ok":
            raise RuntimeError(f"could not create random weights: {result['status']}")
    return str(path), f"RANDOM (seed 0, cached in {path}): timings are real, images are noise"


# ---- rows -------------------------------------------------------------------------------------------------
def availability(row: RowSpec) -> str | None:
    """Why a row cannot run on this machine (None: it can)."""
    if row.peer is not None:
        from ditcache.graphs.registry import get_spec

        from .bench_peers import unavailable

        return unavailable(row.peer, get_spec(row.model).family_record.model_class)
    if row.kind == "stock" or row.kind == "ditcache-eager":
        if row.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "CUDA was requested but torch.cuda.is_available() is False"
        return None
    try:
        from ditcache.compiler.backend import BuildSettings, get_backend

        backend = get_backend(row.backend)
        return backend.unavailable_reason(BuildSettings(row.precision, row.device, dict(row.options)))
    except Exception as exc:  # noqa: BLE001 - a backend that cannot even be imported is unavailable
        return f"backend {row.backend!r} cannot be loaded: {type(exc).__name__}: {exc}"


def plan_numbers(cfg: BenchConfig, row: RowSpec) -> dict[str, Any]:
    """MACs and theoretical speedup of the row's plan (analytic, no model needed)."""
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs import costs_for
    from ditcache.graphs.registry import at_resolution, get_spec

    from .bench_config import ScheduleRef

    spec = at_resolution(get_spec(cfg.model), cfg.resolution, cfg.frames)
    schedule = ScheduleRef(row.schedule, row.schedule_path, row.schedule_inline).load()
    plan = plan_for(schedule, spec)
    costs = costs_for(spec, cfg.model_batch)
    theoretical = plan.theoretical_speedup(costs_for(spec))
    return {"schedule_kind": schedule.kind, "steps": schedule.steps,
            "blocks_run": sum(plan.blocks_computed(s) for s in range(plan.num_steps)),
            "blocks_full": plan.num_steps * plan.num_blocks,
            "gmacs_per_image": plan.total_macs(costs) / cfg.images / 1e9,
            "mac_fraction": 1 / theoretical, "theoretical_speedup": theoretical,
            "variants": [v.name for v in plan.variants]}


def inductor_cache(work: Path) -> Path:
    """torch.compile's on-disk cache for this config's rows (compiles after the first reuse its kernels; cleared
    by --fresh-engines). Always this folder: importing diffusers sets TORCHINDUCTOR_CACHE_DIR to a shared default
    in the runner's own environment."""
    return work / "inductor-cache"


def schedule_file(row: RowSpec, work: Path) -> str:
    """A file path for the row's schedule (inline schedules are written out for export-engines)."""
    if row.schedule_path:
        return row.schedule_path
    import yaml

    path = work / "schedules" / f"{row.schedule}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(dict(row.schedule_inline or {}), sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return str(path)


def run_row(cfg: BenchConfig, row: RowSpec, work: Path, engines: Path, args, prefix: str,
            timeout: float) -> dict[str, Any]:
    """Build (compiled rows) and run one row in worker processes; its raw measurements."""
    row_dir = work / "rows" / row.id.replace("/", "__")
    key = row.key()
    cached = row_dir / "row.json"
    if args.resume and cached.is_file():
        previous = json.loads(cached.read_text())
        if previous.get("key") == key and previous.get("status") == "ok" and Path(
                previous.get("latents_file", "")).is_file():
            _progress(f"{prefix}   reusing the measurement from {cached} (--resume)", args.quiet)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cached.stat().st_mtime))
            return {**previous, "notes": [*previous.get("notes", []),
                                          f"measured by an earlier invocation (row file written {when}; --resume)"]}
    job = {"row": row.to_dict(), "schedule_file": schedule_file(row, work),
           "engines_dir": str(engines / row.id.replace("/", "__")),
           "latents_file": str(row_dir / "latents.pt")}
    env = dict(os.environ)
    if row.threads:
        env.setdefault("OMP_NUM_THREADS", str(row.threads))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache(work))
    measured: dict[str, Any] = {}
    if row.kind == "compiled":
        if args.fresh_engines:
            import shutil

            shutil.rmtree(job["engines_dir"], ignore_errors=True)
            if row.backend in ("inductor", "inductor-jit") and not getattr(args, "_inductor_cache_cleared", False):
                shutil.rmtree(inductor_cache(work), ignore_errors=True)  # cold compiles, measured
                args._inductor_cache_cleared = True
        _progress(f"{prefix}   export-engines ({row.backend}, {row.precision}, {row.granularity})", args.quiet)
        t0 = time.perf_counter()
        build = run_worker("build", job, row_dir, timeout, prefix, args.quiet, env)
        timeout -= time.perf_counter() - t0
        if build["status"] != "ok":
            return {"status": build["status"], "log": str(row_dir / "build.log")}
        measured.update({k: build[k] for k in ("build_s", "export_wall_s", "artifact_bytes", "granularity",
                                               "reused", "validation_max_abs", "validation_min_cosine",
                                               "build_peak_rss_bytes", "graphs")})
    if timeout <= 0:
        return {"status": "failed: no time left for the timed runs after the build (time limit)"}
    result = run_worker("run", job, row_dir, timeout, prefix, args.quiet, env)
    if result["status"] != "ok":
        return {"status": result["status"], "log": str(row_dir / "run.log")}
    measured.update(result)
    measured.update(key=key, log=str(row_dir / "run.log"))
    from .bench_worker import write_json as write_row

    write_row(cached, measured)
    return measured


def assemble(cfg: BenchConfig, row: RowSpec, numbers: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """One results row: spec fields, plan numbers and the measurements."""
    out: dict[str, Any] = dict.fromkeys(COLUMNS)  # every row has every field (None: not measured)
    out.update({
        "id": row.id, "status": measured.get("status", "ok"), "kind": row.kind, "backend": row.backend,
        "precision": row.precision, "schedule": row.schedule, "images": row.num_images,
        "model_batch": cfg.model_batch, "repeats": row.repeats,
        "granularity": measured.get("granularity") if row.kind == "compiled" else None,
        "fidelity_space": "latents", "notes": [r for r in [row.note] if r],
    })
    out.update({k: numbers[k] for k in ("schedule_kind", "steps", "gmacs_per_image", "mac_fraction",
                                        "theoretical_speedup", "variants", "blocks_run", "blocks_full")})
    if row.peer is not None:  # decided at run time: blocks and MACs are counted (eager rows), not planned
        from .bench_peers import counted_numbers

        out["peer"] = dict(row.peer)
        if row.peer["method"] != "none":
            out.update(dict.fromkeys(("gmacs_per_image", "mac_fraction", "theoretical_speedup", "blocks_run")))
            out.update(counted_numbers(measured.get("counts")))
            if measured.get("status", "ok") == "ok" and not measured.get("counts"):
                out["notes"].append("blocks and MACs not counted under torch.compile (counting hooks would be traced "
                                    "into the graphs): see the eager row of the same peer and threshold")
    if out["status"] != "ok":
        if measured.get("log"):
            out["notes"].append(f"log: {measured['log']}")
        return out
    out.update(latency_stats(measured["runs_s"]))
    out["runs_s"] = measured["runs_s"]
    out["per_step_median_ms"] = step_stats(measured.get("step_seconds", {}))
    for k in ("build_s", "export_wall_s", "load_s", "setup_s", "warmup_s", "peak_rss_bytes",
              "sampling_peak_rss_bytes", "weights_bytes", "artifact_bytes", "repeat_max_abs_diff",
              "cuda_peak_allocated_bytes", "validation_max_abs", "validation_min_cosine", "build_peak_rss_bytes",
              "param_count", "threads", "latents_file", "reused", "graph_breaks", "graphs", "recompiles",
              "steady_recompiles", "steady_graphs", "graph_break_reasons", "counts", "cache_dit_summary"):
        if k in measured:
            out[k] = measured[k]
    peak = measured.get("sampling_peak_rss_bytes") or measured.get("peak_rss_bytes")
    if peak and measured.get("weights_bytes"):
        out["rest_bytes"] = peak - measured["weights_bytes"]
    out["notes"].extend(measured.get("notes", []))
    if measured.get("graph_break_reasons"):
        out["notes"].append("graph breaks (dynamo's most frequent reasons): " + "; ".join(
            measured["graph_break_reasons"][:3]))
    if row.backend == "inductor-jit":
        out["notes"].append("JIT backend: torch.compile runs at the first call of each graph, i.e. in the warm-up "
                            "(warmup_s), not in export (build_s)")
    if measured.get("reused") and row.backend != "inductor-jit":  # the JIT stores nothing to reuse
        out["notes"].append(f"{measured['reused']} engine graph(s) reused from an earlier export: build_s is the "
                            f"time recorded when they were built")
    runs = measured["runs_s"]
    if len(runs) > 1 and max(runs) > 1.25 * min(runs):
        out["notes"].append(f"unstable timings: the slowest run took {max(runs) / min(runs):.2f}x the fastest (another "
                            f"process competing for the CPU?); the median of {len(runs)} is reported")
    if measured.get("repeat_max_abs_diff"):
        out["notes"].append(f"repeats differ by up to {measured['repeat_max_abs_diff']:.3g} (nondeterministic kernels)")
    return out


# ---- main -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ditcache.benchmarks.run_benchmarks", description=__doc__, epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="benchmark config YAML (benchmarks/configs/*.yaml)")
    parser.add_argument("--out-dir", help="results folder (default: benchmarks/results/<config name>)")
    parser.add_argument("--cache-dir", help="random weights, engine directories, per-row work files "
                                            "(default: $DITCACHE_BENCH_CACHE or ~/.cache/ditcache/bench)")
    parser.add_argument("--backends", nargs="+", help="run only rows of these backends (diffusers = stock pipeline)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING", help="run only rows whose id contains one of these")
    parser.add_argument("--repeats", type=int, help="override the config's timed runs per row")
    parser.add_argument("--resume", action="store_true",
                        help="reuse rows already measured with identical settings (after an interruption)")
    parser.add_argument("--fresh-engines", action="store_true",
                        help="delete cached engine directories first, so build time is measured in this run")
    parser.add_argument("--time-budget-s", type=float,
                        help="override the config's time_budget_s (0: no budget); rows that would start past it "
                             "are skipped and say so")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the rows (MACs, theoretical speedup, time estimate, status) and exit")
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _gmacs(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.4g}"


def select(rows: list[RowSpec], args) -> list[RowSpec]:
    if args.backends:
        rows = [r for r in rows if r.backend in args.backends]
    if args.only:
        rows = [r for r in rows if any(s in r.id for s in args.only)]
    return rows


def _warnings_for(warnings: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """This call's load warning applies only where this call measured something."""
    ok = [r for r in rows if r["status"] == "ok"]
    if ok and all(any("earlier invocation" in n for n in r.get("notes") or []) for r in ok):
        return [w for w in warnings if "not idle" not in w] + [
            "no row was measured in this call: every row comes from an earlier call (--resume; see each row's note)"]
    return warnings


def write_outputs(cfg: BenchConfig, args, out_dir: Path, results: list[dict[str, Any]], context: dict[str, Any],
                  final: bool) -> dict[str, Any]:
    """Derive the metrics and (re)write every result file atomically; called after each row, so an interrupted
    run leaves consistent files whose unfinished rows say ``pending``."""
    import torch

    latents: dict[str, Any] = {}

    def load_latents(row):
        if row["id"] not in latents:
            latents[row["id"]] = torch.load(row["latents_file"], weights_only=True)
        return latents[row["id"]]

    rows = [dict(r, notes=list(r.get("notes", []))) for r in results]
    derive(rows, load_latents)
    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    document = {
        "command": context["command"],
        "complete": final,
        "machine": context["machine"],
        "load_average_start": context["load_start"],
        "load_average_end": load_end,
        "config": context["config"],
        "fidelity_note": FIDELITY_NOTE,
        "memory_note": ("peak RSS of the row's timed runs (VmHWM reset after warm-up; peak_rss_bytes = "
                        "getrusage ru_maxrss of the whole row process, loading included); weights = parameters x "
                        "bytes per element at the row's precision; rest = peak - weights; artifacts = engine files "
                        "on disk from the export report" + ("; CUDA rows also report torch's peak allocation"
                                                           if cfg.device == "cuda" else "")),
        "baseline_note": baseline_note(cfg.model),
        "peers_note": PEERS_NOTE if any(r.get("peer") for r in rows) else None,
        "warnings": _warnings_for(context["warnings"], rows),
        "total_wall_s": time.perf_counter() - context["start"],
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", document)
    write_csv(out_dir / "results.csv", rows)
    write_markdown(out_dir / "results.md", document)
    plot_speedup(out_dir / "speedup_vs_macs.png", rows, f"{cfg.name}: {cfg.model}, {context['machine']['cpu']}")
    return document


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = "python -m ditcache.benchmarks.run_benchmarks " + shlex.join(argv)
    try:
        cfg = load_config(args.config)
        rows = build_rows(cfg)
    except (ConfigError, ValueError) as exc:
        print(f"run_benchmarks: error: {exc}", file=sys.stderr)
        return 2
    if args.repeats is not None:
        for r in rows:
            r.repeats = args.repeats
    budget = cfg.time_budget_s if args.time_budget_s is None else (args.time_budget_s or None)
    selected = select(rows, args)
    if not selected:
        print("run_benchmarks: error: no row matches --backends/--only", file=sys.stderr)
        return 2
    for r in selected:
        if r.skip is None:
            reason = availability(r)
            if reason:
                r.skip = reason
    numbers = {r.id: plan_numbers(cfg, r) for r in selected}
    if args.dry_run:
        print(f"{'row':<44}{'steps':>6}{'GMACs/img':>11}{'theor. x':>9}{'est. s':>8}  status")
        total = 0.0
        for r in selected:
            n = numbers[r.id]
            if r.skip:
                status = f"skipped: {r.skip}"
            elif budget and total + (r.estimate_s or 0) > budget:
                status = f"skipped by the time budget (estimate: {total:.0f} s used of {budget:.0f} s)"
            else:
                status = "runs"
                total += r.estimate_s or 0
            estimate = "?" if r.estimate_s is None else f"{r.estimate_s:.0f}"
            print(f"{r.id:<44}{n['steps']:>6}{_gmacs(n['gmacs_per_image']):>11}{n['theoretical_speedup']:>9.2f}"
                  f"{estimate:>8}  {status}")
        print(f"estimated time of the rows that run: {total:.0f} s (from estimate_s; rows without one count 0)"
              + (f"; time budget {budget:.0f} s" if budget else ""))
        return 0

    out_dir = Path(args.out_dir or Path("benchmarks") / "results" / cfg.name)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    work = cache / cfg.name
    engines = cache / "engines" / cfg.name
    machine = machine_info(cfg.device)
    load_start = machine.get("load_average")
    warnings = []
    if load_start and load_start[0] > 0.5:
        warnings.append(f"the machine was not idle at the start (1-min load average {load_start[0]:.2f}): other "
                        f"processes compete for the CPU and inflate the timings")
    start = time.perf_counter()
    config_doc = {
        "name": cfg.name, "source": cfg.source, "model": cfg.model, "description": cfg.description,
        "images": cfg.images, "class_labels": list(cfg.class_labels), "guidance": cfg.guidance,
        "model_batch": cfg.model_batch, "scheduler": cfg.scheduler, "seed": cfg.seed, "device": cfg.device,
        "threads": cfg.threads, "warmup": cfg.warmup, "repeats": args.repeats or cfg.repeats,
        "granularity": cfg.granularity, "time_budget_s": budget, "time_limit_s": cfg.time_limit_s,
        "schedules": {k: (v.path or dict(v.inline or {})) for k, v in cfg.schedules.items()},
        "filters": {"backends": args.backends, "only": args.only},
    }
    context = {"command": command, "machine": machine, "config": config_doc, "warnings": warnings,
               "start": start, "load_start": [round(x, 2) for x in load_start] if load_start else None}
    weights, config_doc["weights_note"] = ensure_weights(cfg, cache, args.quiet)
    compile_cache = inductor_cache(work)
    config_doc["inductor_cache"] = (f"{compile_cache} ("
                                    + ("cleared first: cold compiles" if args.fresh_engines else
                                       "warm: kept from an earlier run, compiles reuse its kernels"
                                       if compile_cache.is_dir() else "new: cold compiles") + ")")
    runnable = [r for r in selected if not r.skip]
    _progress(f"{cfg.name}: {len(selected)} rows ({len(runnable)} to run, {len(selected) - len(runnable)} skipped); "
              f"work files in {work}" + (f"; time budget {budget:.0f} s" if budget else ""), args.quiet)
    results = [assemble(cfg, r, numbers[r.id], {"status": f"skipped: {r.skip}" if r.skip else "pending"})
               for r in selected]
    done = 0
    for index, r in enumerate(selected):
        r.weights = weights
        if r.skip:
            continue
        elapsed = time.perf_counter() - start
        if budget and elapsed + (r.estimate_s or 0) > budget:
            r.skip = (f"time budget: {elapsed:.0f} s of {budget:.0f} s used, the row needs ~{r.estimate_s or 0:.0f} s "
                      f"(estimate_s in the config)")
            results[index] = assemble(cfg, r, numbers[r.id], {"status": f"skipped: {r.skip}"})
            _progress(f"[skip] {r.id}: {r.skip}", args.quiet)
            continue
        timeout = cfg.row_timeout_s
        if cfg.time_limit_s:
            timeout = min(timeout, cfg.time_limit_s - elapsed)
            if timeout <= 0:
                r.skip = f"time limit of {cfg.time_limit_s:.0f} s reached"
                results[index] = assemble(cfg, r, numbers[r.id], {"status": f"skipped: {r.skip}"})
                continue
        done += 1
        prefix = f"[{done}/{len(runnable)} {elapsed:6.0f} s]"
        _progress(f"{prefix} {r.id}" + (f" (estimate {r.estimate_s:.0f} s)" if r.estimate_s else ""), args.quiet)
        t0 = time.perf_counter()
        measured = run_row(cfg, r, work, engines, args, prefix, timeout)
        results[index] = row = assemble(cfg, r, numbers[r.id], measured)
        row["row_wall_s"] = time.perf_counter() - t0
        summary = (f"median {row['latency_median_s']:.3f} s" if row["status"] == "ok" else row["status"])
        _progress(f"{prefix}   -> {summary} ({row['row_wall_s']:.0f} s for the row)", args.quiet)
        write_outputs(cfg, args, out_dir, results, context, final=False)
    document = write_outputs(cfg, args, out_dir, results, context, final=True)
    if args.json:
        print((out_dir / "results.json").read_text())
    else:
        print(markdown_table(document["rows"]))
        print(f"\nwrote {out_dir}/results.md, results.csv, results.json, speedup_vs_macs.png "
              f"({time.perf_counter() - start:.0f} s)")
    failed = [r for r in document["rows"] if r["status"].startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
