"""What an engine directory costs and gives, per backend: export time, size on disk, cold start, per-step latency,
peak memory with every variant of a plan loaded, and whether one export serves several batch sizes.

For every model of the config (benchmarks/configs/engines-*.yaml) and every backend, one row:

* **export**: ``export-engines`` in its own process (bench_worker's ``build`` phase; an empty inductor cache, so
  compiles are cold): wall time, and the engine directory's size on disk (every file, manifest included).
* **cold start**: a fresh process (engines_worker's ``coldstart`` phase, empty inductor cache) that imports,
  loads every variant of the plan and samples once: the time from starting the process to the first latents.
  JIT backends compile inside it; artifact backends should not.
* **per-step latency** by variant: the dispatcher's timing (``Dispatcher.timing`` / ``step_seconds``) over the
  timed runs after the first, in the same process.
* **peak RSS** of that process (/proc VmHWM; getrusage ru_maxrss beside it), next to the weights' own size
  (parameters x bytes per element in the export precision).
* **batch** (backends with artifacts): the same loaded engines then sample each other size of ``batch_check`` once
  (after the memory reading); image 0 is compared with the row's own image 0 (per-image seeds: splitting must not
  change it).

Writes ``<out>/results.json`` and ``<out>/results.md`` after every row (an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ditcache.benchmarks.bench_config import ConfigError, RowSpec, _unknown, build_rows, parse_config
from ditcache.benchmarks.bench_report import machine_info, markdown_grid, median, step_stats, write_json
from ditcache.benchmarks.run_benchmarks import availability, default_cache_dir, ensure_weights, run_worker, \
    schedule_file
from ditcache.compiler.atomic import write_atomic

EXAMPLES = """examples:
  python -m ditcache.benchmarks.engines_bench --config benchmarks/configs/engines-cpu.yaml \\
      --out benchmarks/results/engines-cpu/
  python -m ditcache.benchmarks.engines_bench --config benchmarks/configs/engines-cpu.yaml --models dit-fmnist
  python -m ditcache.benchmarks.engines_bench --config benchmarks/configs/engines-cpu.yaml --models dit-xl \\
      --steps 10 --resume
"""
WORKER = "ditcache.benchmarks.engines_worker"
_TOP_KEYS = {"name", "description", "device", "threads", "repeats", "backends", "backend_options", "batch_check",
             "row_timeout_s", "time_budget_s", "granularity", "models"}
_MODEL_KEYS = {"model", "weights", "random_weights", "schedule", "steps", "precision", "classes", "guidance",
               "scheduler", "seed", "validate", "repeats", "backends", "resolution", "batch_check", "note"}


@dataclass
class ModelEntry:
    """One model of an engines config and the rows (one per backend) it expands to."""

    model: str
    rows: list[RowSpec]
    bench: Any  # bench_config.BenchConfig of the entry (weights, request)
    schedule_note: str
    batch_check: tuple[int, ...] = ()
    note: str | None = None


@dataclass
class EnginesConfig:
    """A validated engines config (module docstring of benchmarks/configs/engines-cpu.yaml)."""

    name: str
    source: str
    description: str
    device: str
    batch_check: tuple[int, ...]
    row_timeout_s: float
    time_budget_s: float | None
    models: list[ModelEntry] = field(default_factory=list)
    row_order: tuple[str, ...] = ()  # every row id of the file, selected or not (the order of the results)


# ---- config -----------------------------------------------------------------------------------------------
def shorter_schedule(data: Mapping[str, Any], steps: int, spec) -> dict[str, Any]:
    """The schedule at ``steps`` steps with the same set of variants (Δ-DiT: the boundary scaled and moved to the
    nearest value that keeps every variant), so per-step latency by variant is still measured for each."""
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.schedule import parse_schedule

    def variants(d: Mapping[str, Any]) -> set[str]:
        return {v.name for v in plan_for(parse_schedule(dict(d)), spec).variants}

    if steps < 2:
        raise ConfigError(f"--steps must be at least 2 (got {steps})")
    kind = data.get("kind")
    if kind == "full":
        return {**data, "steps": steps}
    if kind != "delta-dit" or "boundary" not in data:
        raise ConfigError(f"--steps can shorten full and Δ-DiT schedules with an explicit boundary, not {kind!r}: "
                          f"write a schedule for {steps} steps instead")
    wanted = variants(data)
    scaled = round(int(data["boundary"]) * steps / int(data["steps"]))
    for boundary in sorted(range(1, steps), key=lambda b: (abs(b - scaled), b)):
        candidate = {**data, "steps": steps, "boundary": boundary}
        if variants(candidate) == wanted:
            return candidate
    raise ConfigError(f"no boundary keeps the variants {sorted(wanted)} at {steps} steps; use more --steps")


def load_engines_config(path: str | Path, *, steps: int | None = None, repeats: int | None = None,
                        models: Sequence[str] | None = None, backends: Sequence[str] | None = None,
                        random_weights: bool = False) -> EnginesConfig:
    """Read an engines config; every model entry becomes a run_benchmarks config (so rows, weights, schedules and
    requests are validated by bench_config) with one row per backend."""
    from ditcache.graphs.registry import get_spec

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist (see benchmarks/configs/engines-*.yaml)")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, Mapping) or not data.get("models"):
        raise ConfigError(f"{path}: an engines config is a mapping with a non-empty 'models' list")
    _unknown(data, _TOP_KEYS, str(path))
    cfg = EnginesConfig(name=str(data.get("name") or path.stem), source=str(path),
                        description=str(data.get("description") or "").strip(), device=str(data.get("device", "cpu")),
                        batch_check=_batch_sizes(data.get("batch_check"), str(path)),
                        row_timeout_s=float(data.get("row_timeout_s", 1800)),
                        time_budget_s=None if data.get("time_budget_s") is None else float(data["time_budget_s"]))
    known = {m.get("model") for m in data["models"] if isinstance(m, Mapping)}
    cfg.row_order = tuple(f"{m.get('model')}/{b}" for m in data["models"] if isinstance(m, Mapping)
                          for b in m.get("backends") or data.get("backends") or ["eager"])
    for name in models or ():
        if name not in known:
            raise ConfigError(f"--models: {name!r} is not in {path} (have: {', '.join(sorted(map(str, known)))})")
    for i, entry in enumerate(data["models"]):
        where = f"{path}: models[{i}]"
        if not isinstance(entry, Mapping) or "model" not in entry or "schedule" not in entry:
            raise ConfigError(f"{where}: each model entry needs at least 'model' and 'schedule'")
        _unknown(entry, _MODEL_KEYS, where)
        if models and entry["model"] not in models:
            continue
        spec = get_spec(str(entry["model"]))
        schedule, note = _schedule_entry(entry, path.parent, steps, spec, where)
        names = [str(b) for b in entry.get("backends") or data.get("backends") or ["eager"]]
        if backends:
            names = [b for b in names if b in backends]
        if not names:
            continue
        classes = [int(c) for c in entry.get("classes") or [0]]
        bench = {
            "name": f"{cfg.name}-{entry['model']}", "model": entry["model"], "device": cfg.device,
            "threads": data.get("threads"), "images": len(classes), "classes": classes,
            "guidance": entry.get("guidance", 4.0), "scheduler": entry.get("scheduler", "ddim"),
            "seed": entry.get("seed", 0), "warmup": "run", "repeats": repeats or entry.get("repeats")
            or data.get("repeats", 2), "step_timing": "inline",
            "granularity": data.get("granularity", "variant"), "validate": entry.get("validate", True),
            "row_timeout_s": cfg.row_timeout_s, "backend_options": data.get("backend_options") or {},
            "schedules": {"plan": schedule}, "resolution": entry.get("resolution"),
            "matrix": [{"backends": names, "precisions": [entry.get("precision", "fp32")], "schedules": ["plan"]}],
        }
        if entry.get("random_weights") or random_weights:
            bench["random_weights"] = True
        else:
            bench["weights"] = entry.get("weights")
        parsed = parse_config(bench, source=where, base_dir=path.parent, default_name=bench["name"])
        sizes = cfg.batch_check if entry.get("batch_check") is None else _batch_sizes(entry["batch_check"], where)
        cfg.models.append(ModelEntry(str(entry["model"]), build_rows(parsed), parsed, note, sizes, entry.get("note")))
    if not cfg.models:
        raise ConfigError(f"{path}: no row matches --models/--backends")
    return cfg


def _batch_sizes(value: Any, where: str) -> tuple[int, ...]:
    sizes = tuple(int(b) for b in value or ())
    if any(b < 1 for b in sizes):
        raise ConfigError(f"{where}: batch_check sizes must be >= 1 (got {list(sizes)})")
    return sizes


def _schedule_entry(entry: Mapping[str, Any], base: Path, steps: int | None, spec,
                    where: str) -> tuple[str | dict[str, Any], str]:
    """The entry's schedule (a path, or an inline mapping when shortened) and a note saying which it is."""
    schedule = entry["schedule"]
    steps = steps or entry.get("steps")
    if isinstance(schedule, str):
        file = (base / schedule).resolve()
        if not file.is_file():
            raise ConfigError(f"{where}: schedule file {str(file)!r} does not exist (paths are relative to the config)")
        if not steps:
            return str(file), f"{schedule}"
        schedule_data = yaml.safe_load(file.read_text())
        source = str(schedule)
    elif isinstance(schedule, Mapping):
        schedule_data, source = dict(schedule), "inline"
        if not steps:
            return schedule_data, f"inline {schedule_data}"
    else:
        raise ConfigError(f"{where}: 'schedule' is a file path or an inline schedule mapping")
    short = shorter_schedule(schedule_data, int(steps), spec)
    changed = ", ".join(f"{k} {schedule_data.get(k)} -> {v}" for k, v in short.items() if schedule_data.get(k) != v)
    return short, f"{source}, shortened ({changed}; same variants)"


# ---- measuring --------------------------------------------------------------------------------------------
def directory_bytes(folder: Path) -> tuple[int, int]:
    """Bytes and count of every file under ``folder`` (apparent sizes)."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def engine_kind(backend: str) -> str:
    """What a row's engines are: no export, compiled in the process (JIT) or artifacts loaded from disk."""
    if backend == "eager":
        return "eager"
    from ditcache.compiler.backend import get_backend

    try:
        return "artifacts" if get_backend(backend).writes_artifacts else "jit"
    except Exception:  # noqa: BLE001 - unknown or broken backend: the row says why it is skipped
        return "?"


def _environment(row: RowSpec, cache: Path) -> dict[str, str]:
    """The worker's environment: threads, and an empty inductor cache of its own (compiles are cold)."""
    shutil.rmtree(cache, ignore_errors=True)
    env = dict(os.environ)
    if row.threads:
        env["OMP_NUM_THREADS"] = str(row.threads)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return env


def cold_start(row: RowSpec, job: dict[str, Any], work: Path, timeout: float, prefix: str,
               quiet: bool) -> dict[str, Any]:
    """One fresh process from start to first latents (and the timed runs after them)."""
    env = _environment(row, work / "inductor-cache")
    launched = time.time()
    result = run_worker("coldstart", job, work, timeout, prefix, quiet, env, module=WORKER)
    if result.get("status") == "ok":
        result["cold_start_s"] = result["first_latents_unix"] - launched
        result["python_start_s"] = result["started_unix"] - launched
    return result


def _vs_eager(latents_file: str, eager_file: str) -> dict[str, float]:
    import torch

    from ditcache.benchmarks.bench_report import fidelity

    mine, eager = torch.load(latents_file, weights_only=True), torch.load(eager_file, weights_only=True)
    f = fidelity(mine, eager)
    return {"max_abs_vs_eager": float((mine - eager).abs().max()), "psnr_vs_eager_db": f["psnr_db"],
            "cosine_vs_eager": f["cosine"]}


def measure_row(entry: ModelEntry, row: RowSpec, cfg: EnginesConfig, work: Path, engines: Path, args,
                prefix: str) -> dict[str, Any]:
    """Export (compiled rows), cold start with the timed runs, then the batch check; the row's result."""
    row_dir = work / entry.model / row.id.replace("/", "__")
    out: dict[str, Any] = {"status": "ok", "notes": []}
    job = {"row": row.to_dict(), "schedule_file": schedule_file(row, row_dir), "repeats": row.repeats,
           "engines_dir": str(engines / entry.model / row.id.replace("/", "__")),
           "latents_file": str(row_dir / "latents.pt"),
           "batch_check": [b for b in entry.batch_check if b != row.num_images]
           if engine_kind(row.backend) == "artifacts" else []}  # eager and JIT have no export to reuse
    out["engines_dir"] = job["engines_dir"]
    if row.kind == "compiled":
        shutil.rmtree(job["engines_dir"], ignore_errors=True)  # export time is measured: never reuse engines
        _progress(f"{prefix}   export-engines ({row.backend}, {row.precision}, {row.granularity})", args.quiet)
        build = run_worker("build", job, row_dir, cfg.row_timeout_s, prefix, args.quiet,
                           _environment(row, row_dir / "inductor-cache-build"))
        if build["status"] != "ok":
            return {"status": build["status"], "log": str(row_dir / "build.log"), "notes": []}
        out.update(export_s=build["export_wall_s"], export_process_s=build["wall_s"],
                   export_peak_rss_bytes=build.get("build_peak_rss_bytes"), granularity=build.get("granularity"),
                   validation_max_abs=build.get("validation_max_abs"))
        out["disk_bytes"], out["disk_files"] = directory_bytes(Path(job["engines_dir"]))
        out["export_artifact_bytes"] = build.get("artifact_bytes")
    _progress(f"{prefix}   cold start (fresh process)", args.quiet)
    cold = cold_start(row, job, row_dir / "cold", cfg.row_timeout_s, prefix, args.quiet)
    if cold["status"] != "ok":
        return {**out, "status": cold["status"], "log": str(row_dir / "cold" / "coldstart.log")}
    out.update({k: cold[k] for k in ("cold_start_s", "python_start_s", "import_s", "load_s", "first_run_s",
                                     "runs_s", "variants_loaded", "rss_imported_bytes", "rss_loaded_bytes",
                                     "peak_rss_bytes", "peak_rss_source", "ru_maxrss_bytes", "param_count",
                                     "weights_bytes", "threads", "latents_file")})
    if out["runs_s"]:  # what starting costs beyond sampling itself: cold start minus a warm run
        out["startup_overhead_s"] = out["cold_start_s"] - median(out["runs_s"])
    out["per_step_ms"] = step_stats(cold["step_seconds"])
    out["first_run_per_step_ms"] = step_stats(cold["first_run_step_seconds"])
    if out.get("weights_bytes") and out.get("peak_rss_bytes"):
        out["peak_over_weights"] = out["peak_rss_bytes"] / out["weights_bytes"]
        if out.get("rss_imported_bytes"):  # what loading and sampling added to a process that imported torch
            out["peak_above_imports_bytes"] = out["peak_rss_bytes"] - out["rss_imported_bytes"]
            out["above_imports_over_weights"] = out["peak_above_imports_bytes"] / out["weights_bytes"]
    out["batch"] = [{**{k: v for k, v in b.items() if k != "step_seconds"},
                     **({"per_step_ms": step_stats(b["step_seconds"])} if "step_seconds" in b else {})}
                    for b in cold["batch"]]
    return out


def _progress(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---- report -----------------------------------------------------------------------------------------------
HEADER = ("model", "backend", "engines", "status", "export s", "on disk MiB",
          "cold start s (import + load + 1st run; cold start - warm run)", "per-step ms by variant", "run s",
          "peak RSS GiB (above imports)", "weights GiB", "peak / weights (above imports / weights)",
          "batch sizes from one export", "max-abs vs eager")


def _num(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None else f"{value:{spec}}"


def _batch_cell(row: dict[str, Any]) -> str:
    checks = row.get("batch") or []
    if not checks:
        return "–"
    cells = [f"{row['images']} (the row)"]
    for c in checks:
        if c["status"] == "ok":
            cells.append(f"{c['images']}: ok in {c['run_s']:.2f} s, image 0 Δ {c['image0_max_abs_vs_row']:.1e}")
        else:
            cells.append(f"{c['images']}: {c['status'].split(':')[0]} (see notes)")
    return "; ".join(cells)


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    """The results table."""
    cells = []
    for r in rows:
        ok = r["status"] == "ok"
        steps = r.get("per_step_ms") or {}
        cold = (f"{r['cold_start_s']:.1f} ({r['import_s'] + r['python_start_s']:.1f} + {r['load_s']:.1f} + "
                f"{r['first_run_s']:.1f})" if ok else "–")
        if ok and r.get("startup_overhead_s") is not None:
            cold += f"; {r['startup_overhead_s']:.1f} over a warm run"
        runs = r.get("runs_s") or []
        cells.append([
            r["model"], r["backend"], r.get("engines", "?"), r["status"], _num(r.get("export_s")),
            "–" if r.get("disk_bytes") is None else f"{r['disk_bytes'] / 2**20:.1f}", cold,
            "; ".join(f"{k}: {v['median_ms']:.3g}" for k, v in steps.items()) if ok else "–",
            f"{median(runs):.3f}" if runs else "–",
            "–" if not r.get("peak_rss_bytes") else f"{r['peak_rss_bytes'] / 2**30:.2f}"
            + ("" if r.get("peak_above_imports_bytes") is None else f" ({r['peak_above_imports_bytes'] / 2**30:.2f})"),
            "–" if not r.get("weights_bytes") else f"{r['weights_bytes'] / 2**30:.3f}",
            _num(r.get("peak_over_weights"), ".2f") + ("" if r.get("above_imports_over_weights") is None else
                                                        f" ({r['above_imports_over_weights']:.2f})"),
            _batch_cell(r),
            _num(r.get("max_abs_vs_eager"), ".1e"),
        ])
    return markdown_grid(HEADER, cells)


def write_markdown(path: Path, document: Mapping[str, Any]) -> None:
    m, c = document["machine"], document["config"]
    v = m["versions"]
    lines = [f"# Engines benchmark `{c['name']}`", "",
             f"- **command**: `{document['command']}`",
             f"- **date**: {m['date_utc']}",
             f"- **machine**: {m['cpu']}, {m['cores']} cores ({m.get('usable_cores')} usable), "
             f"{(m.get('memory_bytes') or 0) / 2**30:.1f} GiB RAM" + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
             f"- **load average at start / end**: {document['load_average_start']} / {document['load_average_end']}",
             f"- **versions**: torch {v.get('torch')}, diffusers {v.get('diffusers')}, onnxruntime "
             f"{v.get('onnxruntime')}, onnx {v.get('onnx')}, ditcache {v.get('ditcache')}",
             f"- **protocol**: {document['protocol']}"]
    for model in c["models"]:
        lines.append(f"- **{model['model']}**: {model['request']}; schedule {model['schedule']}; weights: "
                     f"{model['weights']}" + (f". {model['note']}" if model.get("note") else ""))
    lines += [f"- **WARNING**: {w}" for w in document.get("warnings", [])]
    for call in document.get("earlier_calls", []):
        lines.append(f"- **earlier call** (its rows not measured again are kept; each row's measured_utc and "
                     f"load_average_row in results.json say when): `{call['command']}`, {call['date_utc']}, load "
                     f"average {call['load_average_start']} / {call['load_average_end']}"
                     + "".join(f"; WARNING: {w}" for w in call.get("warnings", [])))
    if c.get("description"):
        lines += ["", c["description"]]
    lines += ["", markdown_rows(document["rows"]), ""]
    notes = [(f"{r['model']}/{r['backend']}", n) for r in document["rows"] for n in r.get("notes", [])]
    if notes:
        lines += ["## Notes", ""] + [f"- `{i}`: {n}" for i, n in notes] + [""]
    lines += ["Every field (per-variant min/max, first-run step times, batch checks, RSS after loading): "
              "`results.json`.", ""]
    write_atomic(path, "\n".join(lines), mkdir=True)


PROTOCOL = ("export = export-engines in its own process (wall time; empty inductor cache: cold compiles); on disk "
            "= every file of the engine directory; cold start = from starting a fresh process to its first latents "
            "(Python start + imports, loading every variant of the plan, one sampling run; JIT backends compile in "
            "that run; empty inductor cache); per-step = median of the dispatcher's timing per variant over the "
            "timed runs after the first (same process); run s = median whole sampling run; peak RSS = VmHWM of that "
            "process (every variant loaded and run; JIT compiles count too; ru_maxrss also counts the parent's pages "
            "between fork and exec, so it is kept beside it only), and in brackets "
            "what it added to the RSS the process had after importing torch and diffusers; weights = "
            "parameters x bytes per element in the export precision; batch = the same loaded engines sampling other "
            "batch sizes afterwards, image 0 compared with the row's (per-image seeds); max-abs vs "
            "eager = final latents against the eager row of the same model and request")


def _notes(row: RowSpec, result: dict[str, Any], kind: str) -> list[str]:
    notes = list(result.get("notes", []))
    if row.note:
        notes.append(row.note)
    if kind == "jit" and result.get("status") == "ok":
        notes.append("JIT: export writes nothing" + (" (its time is the validation's compile)" if row.validate
                                                     else "") + "; the cold start compiles every graph")
    if kind == "eager":
        notes.append("no export: the model's weights are the only artifact")
    for check in result.get("batch") or []:
        if check["status"] != "ok":
            notes.append(f"batch {check['images']}: {check['status']}")
    runs = result.get("runs_s") or []
    if len(runs) > 1 and max(runs) > 1.25 * min(runs):
        notes.append(f"unstable timings: slowest run {max(runs) / min(runs):.2f}x the fastest")
    if result.get("log") and result.get("status") != "ok":
        notes.append(f"log: {result['log']}")
    return notes


# measured fields of a row (None where not measured: eager has no export, a skipped row has nothing)
FIELDS = ("export_s", "export_process_s", "export_peak_rss_bytes", "validation_max_abs", "disk_bytes", "disk_files",
          "export_artifact_bytes", "engines_dir", "cold_start_s", "startup_overhead_s", "python_start_s", "import_s",
          "load_s",
          "first_run_s", "runs_s", "per_step_ms", "first_run_per_step_ms", "variants_loaded", "rss_imported_bytes",
          "rss_loaded_bytes", "peak_rss_bytes", "peak_rss_source", "ru_maxrss_bytes", "param_count", "weights_bytes",
          "peak_over_weights",
          "peak_above_imports_bytes", "above_imports_over_weights", "threads", "latents_file", "batch",
          "max_abs_vs_eager", "psnr_vs_eager_db", "cosine_vs_eager", "row_wall_s", "measured_utc",
          "load_average_row")


def assemble(entry: ModelEntry, row: RowSpec, result: dict[str, Any]) -> dict[str, Any]:
    """One results row: what it is, then every field of FIELDS."""
    kind = engine_kind(row.backend)
    measured = {k: v for k, v in result.items() if k != "notes"}
    if row.kind != "compiled":
        measured.pop("engines_dir", None)
    return {"id": f"{entry.model}/{row.backend}", "model": entry.model, "backend": row.backend, "engines": kind,
            "precision": row.precision, "steps": row.steps, "images": row.num_images,
            "model_batch": row.num_images * (2 if row.guidance > 1 else 1), "granularity": row.granularity,
            "key": f"{row.key()}-batch-{'-'.join(map(str, entry.batch_check))}", **dict.fromkeys(FIELDS),
            **measured, "notes": _notes(row, result, kind)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ditcache.benchmarks.engines_bench", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="engines config YAML (benchmarks/configs/engines-*.yaml)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/<config name>)")
    parser.add_argument("--cache-dir", help="engine directories and work files (default: $DITCACHE_BENCH_CACHE or "
                                            "~/.cache/ditcache/bench)")
    parser.add_argument("--models", nargs="+", help="only these models of the config")
    parser.add_argument("--backends", nargs="+", help="only these backends")
    parser.add_argument("--steps", type=int, help="shorten every schedule to this many steps (same variants)")
    parser.add_argument("--repeats", type=int, help="timed runs after the first latents (default: the config's)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights for every model, also those with shipped weights (timing only)")
    parser.add_argument("--resume", action="store_true",
                        help="keep rows of an earlier call's results.json in --out that were measured with identical "
                             "settings; measure the rest")
    parser.add_argument("--again", action="store_true",
                        help="with --resume: measure the selected rows again (the rows not selected are still kept)")
    parser.add_argument("--json", action="store_true", help="print results.json to stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        print("engines_bench: error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        cfg = load_engines_config(args.config, steps=args.steps, repeats=args.repeats, models=args.models,
                                  backends=args.backends, random_weights=args.random_weights)
    except (ConfigError, ValueError) as exc:
        print(f"engines_bench: error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out or Path("benchmarks") / "results" / cfg.name)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    work, engines = cache / cfg.name, cache / "engines" / cfg.name
    earlier = json.loads((out_dir / "results.json").read_text()) if args.resume and (
        out_dir / "results.json").is_file() else None
    previous = {} if args.again else {
        r["id"]: r for r in (earlier or {}).get("rows", [])
        if r.get("status") == "ok" and r.get("latents_file") and Path(r["latents_file"]).is_file()}
    machine = machine_info(cfg.device)
    load_start = _load()
    warnings = []
    if load_start and load_start[0] > 0.5:
        warnings.append(f"the machine was not idle at the start (1-min load average {load_start[0]:.2f}): other "
                        f"processes competed for the CPU (timings inflated)")
    start = time.perf_counter()
    document: dict[str, Any] = {
        "command": "python -m ditcache.benchmarks.engines_bench " + shlex.join(argv), "complete": False,
        "machine": machine, "load_average_start": load_start, "load_average_end": None, "warnings": warnings,
        "protocol": PROTOCOL,
        "config": {"name": cfg.name, "source": cfg.source, "description": cfg.description, "device": cfg.device,
                   "models": []},
        "rows": [], "earlier_calls": [],
    }
    if earlier is not None:  # --resume: what an earlier call measured stays, with the conditions it ran under
        document["earlier_calls"] = [*earlier.get("earlier_calls", []), {
            "command": earlier["command"], "date_utc": earlier["machine"]["date_utc"],
            "load_average_start": earlier.get("load_average_start"),
            "load_average_end": earlier.get("load_average_end"), "warnings": earlier.get("warnings", [])}]

    def save(final: bool = False) -> None:
        document["load_average_end"] = _load()
        document["total_wall_s"] = time.perf_counter() - start
        document["complete"] = final
        write_json(out_dir / "results.json", document)
        write_markdown(out_dir / "results.md", document)

    pending = []
    for entry in cfg.models:
        bench = entry.bench
        weights, weights_note = ensure_weights(bench, cache, args.quiet)
        document["config"]["models"].append({
            "model": entry.model, "weights": weights_note, "schedule": entry.schedule_note, "note": entry.note,
            "batch_check": list(entry.batch_check),
            "request": f"{bench.images} image(s), classes {list(bench.class_labels)}, guidance {bench.guidance} "
                       f"(model batch {bench.model_batch}), {bench.scheduler}, {entry.rows[0].steps} steps, "
                       f"{entry.rows[0].precision}, threads {bench.threads or 'default'}, "
                       f"{bench.repeats} timed run(s) after the first"})
        for row in entry.rows:
            row.weights = weights
            row.skip = row.skip or availability(row)
            document["rows"].append(assemble(entry, row, {"status": f"skipped: {row.skip}" if row.skip else
                                                          "pending"}))
            pending.append((entry, row, len(document["rows"]) - 1))
    if earlier is not None:  # rows and models of the earlier results this call does not select are kept as they are
        ids = {r["id"] for r in document["rows"]}
        note = "from an earlier call (--resume); not selected in this one"
        kept = [dict(r, notes=[*(n for n in r.get("notes", []) if n != note), note])
                for r in earlier["rows"] if r["id"] not in ids]
        document["rows"] = kept + document["rows"]
        pending = [(entry, row, index + len(kept)) for entry, row, index in pending]
        models = {m["model"] for m in document["config"]["models"]}
        document["config"]["models"] = [m for m in earlier["config"]["models"] if m["model"] not in models] + \
            document["config"]["models"]
    rows_before = list(document["rows"])
    order = {row_id: i for i, row_id in enumerate(cfg.row_order)}
    models = list(dict.fromkeys(row_id.split("/")[0] for row_id in cfg.row_order))
    document["rows"].sort(key=lambda r: order.get(r["id"], len(order)))
    document["config"]["models"].sort(key=lambda m: models.index(m["model"]) if m["model"] in models else len(models))
    where = {id(r): i for i, r in enumerate(document["rows"])}
    pending = [(entry, row, where[id(rows_before[index])]) for entry, row, index in pending]
    runnable = [p for p in pending if not p[1].skip]
    for done, (entry, row, index) in enumerate(runnable, 1):
        elapsed = time.perf_counter() - start
        prefix = f"[{done}/{len(runnable)} {elapsed:6.0f} s]"
        old = previous.get(document["rows"][index]["id"])
        if old is not None and old.get("key") == document["rows"][index]["key"]:
            document["rows"][index] = {**old, "notes": [*old.get("notes", []),
                                                        "measured by an earlier call (--resume)"]}
            _progress(f"{prefix} {entry.model}/{row.backend}: kept from the earlier results (--resume)", args.quiet)
            continue
        if cfg.time_budget_s and elapsed > cfg.time_budget_s:
            document["rows"][index] = assemble(entry, row, {"status": f"skipped: time budget of "
                                                                      f"{cfg.time_budget_s:.0f} s used"})
            continue
        _progress(f"{prefix} {entry.model}/{row.backend} ({row.precision}, {row.steps} steps)", args.quiet)
        t0, row_load = time.perf_counter(), _load()
        result = measure_row(entry, row, cfg, work, engines, args, prefix)
        result["row_wall_s"] = time.perf_counter() - t0
        result["measured_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        result["load_average_row"] = [row_load, _load()]
        if row_load and row_load[0] > 0.5:
            result.setdefault("notes", []).append(
                f"machine shared: 1-min load average {row_load[0]:.2f} when the row started (timings inflated)")
        document["rows"][index] = assemble(entry, row, result)
        _progress(f"{prefix}   -> {result['status']}" + (f", cold start {result['cold_start_s']:.1f} s"
                                                         if "cold_start_s" in result else ""), args.quiet)
        save()
    for r in document["rows"]:  # correctness beside the numbers: every backend against eager, same request
        eager = next((o for o in document["rows"] if o["model"] == r["model"] and o["backend"] == "eager"
                      and o["status"] == "ok"), None)
        if r["status"] == "ok" and eager is not None and eager is not r and all(
                Path(x["latents_file"]).is_file() for x in (r, eager)):
            r.update(_vs_eager(r["latents_file"], eager["latents_file"]))
    save(final=True)
    if args.json:
        print((out_dir / "results.json").read_text())
    else:
        print(markdown_rows(document["rows"]))
        print(f"\nwrote {out_dir}/results.md, results.json ({time.perf_counter() - start:.0f} s)")
    return 1 if any(r["status"].startswith("failed") for r in document["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
