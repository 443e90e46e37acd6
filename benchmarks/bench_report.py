"""Derived metrics (speedups, efficiency, fidelity) and the result files: CSV, JSON, markdown, plot."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

from ditcache.benchmarks.paths import repo_relative
from ditcache.benchmarks.plots import pyplot
from ditcache.compiler.atomic import atomic_path, write_atomic

# Columns of results.csv, in order; results.json rows carry these and a few lists (runs, per-step samples).
COLUMNS = (
    "id", "status", "kind", "backend", "precision", "schedule", "schedule_kind", "steps", "images", "model_batch",
    "granularity", "repeats", "latency_median_s", "latency_min_s", "latency_max_s", "latency_iqr_s",
    "per_step_median_ms", "build_s", "export_wall_s", "load_s", "setup_s", "warmup_s", "blocks_run", "blocks_full",
    "gmacs_per_image", "mac_fraction", "theoretical_speedup", "speedup_vs_full", "speedup_vs_stock", "efficiency",
    "profile_speedup", "profile_efficiency", "peak_rss_bytes",
    "sampling_peak_rss_bytes", "weights_bytes", "rest_bytes", "cuda_peak_allocated_bytes", "artifact_bytes",
    "psnr_vs_full_db",
    "cosine_vs_full", "psnr_vs_stock_db", "cosine_vs_stock", "fidelity_space", "full_reference",
    "stock_reference", "repeat_max_abs_diff", "graph_breaks", "recompiles", "steady_recompiles", "notes",
)


# ---- small helpers ----------------------------------------------------------------------------------------
def finite_or_none(value: Any) -> Any:
    """JSON-safe numbers: NaN -> None, +inf -> "inf" (PSNR of identical outputs)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return finite_or_none(obj)


def median(values: Iterable[float]) -> float:
    values = sorted(values)
    n = len(values)
    if not n:
        return float("nan")
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def quantile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default)."""
    values = sorted(values)
    if not values:
        return float("nan")
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


# ---- machine ----------------------------------------------------------------------------------------------
def machine_info(device: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "versions": library_versions(),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def library_versions() -> dict[str, str]:
    import importlib

    versions = {}
    for name in ("torch", "diffusers", "onnxruntime", "onnx", "tensorrt", "numpy"):
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except Exception:  # noqa: BLE001 - absent or broken: say so
            versions[name] = "not installed"
    try:
        import ditcache

        versions["ditcache"] = ditcache.__version__
    except Exception:  # noqa: BLE001
        pass
    return versions


# ---- metrics ----------------------------------------------------------------------------------------------
def latency_stats(runs: list[float]) -> dict[str, float]:
    return {
        "latency_median_s": median(runs),
        "latency_min_s": min(runs) if runs else float("nan"),
        "latency_max_s": max(runs) if runs else float("nan"),
        "latency_iqr_s": quantile(runs, 0.75) - quantile(runs, 0.25) if runs else float("nan"),
    }


def step_stats(step_seconds: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median / min / max step time in ms and how many steps were timed."""
    return {name: {"median_ms": 1e3 * median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v), "count": len(v)}
            for name, v in step_seconds.items() if v}


def fidelity(cached, full) -> dict[str, float]:
    """PSNR (data range = max - min of the full output) and cosine of ``cached`` against ``full``."""
    from ditcache.images import cosine, psnr

    data_range = float(full.max() - full.min())
    return {"psnr_db": psnr(cached, full, data_range=data_range), "cosine": cosine(cached, full)}


def profile_speedup(row: Mapping[str, Any]) -> float | None:
    """Speedup of a cached row over its *own* full steps: steps x median full-step time / summed step times.

    Both come from the same process, so machine drift between rows (seen: up to 13% on a shared 2-core VM)
    cancels; the gap to the theoretical speedup is then the cost of the skipped steps' non-block work (head,
    tail, cache adds) and of the recording steps, which the MAC model counts too.
    """
    steps = row.get("per_step_median_ms") or {}
    full = [v["median_ms"] for k, v in steps.items() if k == "full" or k.startswith("full+")]
    total = sum(v["median_ms"] * v["count"] for v in steps.values())
    if not full or not total:
        return None
    calls = sum(v["count"] for v in steps.values())  # denoiser calls over all timed runs
    return calls * sorted(full)[len(full) // 2] / total


def derive(rows: list[dict[str, Any]], load_latents) -> None:
    """Fill speedups, efficiency and fidelity in place. A row's *full reference* is the same backend and
    precision with the full schedule of the same step count; its *stock reference* is the stock pipeline
    row of the same step count (fp32 preferred)."""
    ok = {r["id"]: r for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        fulls = sorted((o for o in ok.values() if o["backend"] == r["backend"] and o["precision"] == r["precision"]
                        and o["schedule_kind"] == "full" and o["steps"] == r["steps"]),
                       key=lambda o: o.get("granularity") != r.get("granularity"))  # same granularity first
        full = fulls[0] if fulls else None
        stocks = sorted((o for o in ok.values() if o["kind"] == "stock" and o["steps"] == r["steps"]),
                        key=lambda o: o["precision"] != "fp32")
        stock = stocks[0] if stocks else None
        notes = r.setdefault("notes", [])
        if r.get("peer") is not None:  # a peer on the stock pipeline: against the same pipeline uncached
            from .bench_peers import reference

            full, said = reference(r, list(ok.values()))
            notes.extend([said] if said else [])
        if full is None and r["kind"] == "ditcache-eager":
            # ditcache's eager full schedule is DiTPipeline's computation (bit-identical for DDIM and DPM-Solver++,
            # tests/compiler/test_runtime.py): the stock row of the same precision stands in for it
            full = next((o for o in stocks if o["precision"] == r["precision"]), None)
            if full is not None:
                notes.append(f"full reference: the stock pipeline row {full['id']} (same eager computation; no "
                             f"eager full row was run)")
        if r["schedule_kind"] != "full" and (own := profile_speedup(r)) is not None:
            r["profile_speedup"], r["profile_efficiency"] = own, own / r["theoretical_speedup"]
        if full is not None:
            r["full_reference"] = full["id"]
            r["speedup_vs_full"] = full["latency_median_s"] / r["latency_median_s"]
            r["efficiency"] = (r["speedup_vs_full"] / r["theoretical_speedup"] if r.get("theoretical_speedup")
                               else None)  # peers under torch.compile: blocks not counted
            if full is not r:
                f = fidelity(load_latents(r), load_latents(full))
                r["psnr_vs_full_db"], r["cosine_vs_full"] = f["psnr_db"], f["cosine"]
        elif r["schedule_kind"] != "full":
            notes.append(f"no full-schedule row with {r['steps']} steps for {r['backend']}/{r['precision']}: "
                         f"speedup vs full, efficiency and fidelity vs full not measured")
        if stock is not None:
            r["stock_reference"] = stock["id"]
            r["speedup_vs_stock"] = stock["latency_median_s"] / r["latency_median_s"]
            if stock is not r:
                f = fidelity(load_latents(r), load_latents(stock))
                r["psnr_vs_stock_db"], r["cosine_vs_stock"] = f["psnr_db"], f["cosine"]
        else:
            notes.append(f"no stock-pipeline row with {r['steps']} steps: speedup vs stock not measured")


# ---- writers ----------------------------------------------------------------------------------------------
def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_json_safe(value), sort_keys=True)
    value = finite_or_none(value)
    return "" if value is None else value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r.get(k)) for k in COLUMNS})
    write_atomic(path, repo_relative(buffer.getvalue()), mkdir=True)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    text = json.dumps(_json_safe(document), indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(path, repo_relative(text), mkdir=True)


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞ (identical)"
    return f"{value:{spec}}{suffix}"


def _gmacs(value: Any) -> str:
    return "–" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.4g}"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _gib(value: Any) -> str:
    return "–" if value is None else f"{value / 2**30:.2f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


MD_HEADER = ("row", "status", "steps", "latency s: median (min–max)", "build / load / warm-up s", "per-step ms",
             "blocks run / full", "GMACs/img", "MAC frac.", "theor. ×", "× vs full", "× vs stock", "eff.",
             "eff. (own profile)", "peak RSS GiB (weights + rest)", "artifacts MiB", "PSNR vs full dB", "cos vs full",
             "PSNR vs stock dB", "dynamo breaks / recompiles (timed runs)")


def markdown_grid(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table of already formatted cells (pipes and newlines escaped)."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        ok = r["status"] == "ok"
        steps = r.get("per_step_median_ms") or {}
        per_step = "; ".join(f"{k}: {_ms(v['median_ms'])} (×{v['count']})" for k, v in steps.items()) if ok else "–"
        latency = (f"{r['latency_median_s']:.3f} ({r['latency_min_s']:.3f}–{r['latency_max_s']:.3f})"
                   if ok else "–")
        times = " / ".join(_fmt(r.get(k), ".1f") for k in ("build_s", "load_s", "warmup_s")) if ok else "–"
        peak = r.get("sampling_peak_rss_bytes") or r.get("peak_rss_bytes")
        memory = (f"{_gib(peak)} ({_gib(r.get('weights_bytes'))} + {_gib(r.get('rest_bytes'))})"
                  if ok and peak else "–")
        if ok and r.get("cuda_peak_allocated_bytes"):
            memory += f"; GPU (torch) {_gib(r['cuda_peak_allocated_bytes'])}"
        artifacts = r.get("artifact_bytes")
        blocks = (f"{r['blocks_run']:.4g} / {r['blocks_full']}" if r.get("blocks_run") is not None
                  and r.get("blocks_full") else "–")
        dynamo = (f"{r['graph_breaks']} / {r.get('recompiles')} ({r.get('steady_recompiles')})"
                  if ok and r.get("graph_breaks") is not None else "–")
        cells = [
            r["id"], r["status"], r["steps"], latency, times, per_step, blocks,
            _gmacs(r.get("gmacs_per_image")), _fmt(r.get("mac_fraction"), ".3f"),
            _fmt(r.get("theoretical_speedup"), ".2f"),
            _fmt(r.get("speedup_vs_full") if ok else None, ".2f"),
            _fmt(r.get("speedup_vs_stock") if ok else None, ".2f"),
            _fmt(r.get("efficiency") if ok else None, ".2f"),
            _fmt(r.get("profile_efficiency") if ok else None, ".2f"), memory,
            "–" if not artifacts else f"{artifacts / 2**20:.1f}",
            _fmt(r.get("psnr_vs_full_db"), ".2f"), _fmt(r.get("cosine_vs_full"), ".6f"),
            _fmt(r.get("psnr_vs_stock_db"), ".2f"), dynamo,
        ]
        table.append(cells)
    return markdown_grid(MD_HEADER, table)


def headline(rows: list[dict[str, Any]]) -> list[str]:
    """The answer in one line per step count: the fastest row against the stock pipeline, and what it costs."""
    lines = []
    ok = [r for r in rows if r["status"] == "ok" and r.get("speedup_vs_stock") is not None and r["kind"] != "stock"]
    for steps in sorted({r["steps"] for r in ok}):
        best = max((r for r in ok if r["steps"] == steps), key=lambda r: r["speedup_vs_stock"])
        line = (f"- **{steps} steps**: fastest row `{best['id']}` is **{best['speedup_vs_stock']:.2f}× faster** than "
                f"the stock pipeline (`{best['stock_reference']}`); its final latents vs the stock output: PSNR "
                f"{_fmt(best.get('psnr_vs_stock_db'), '.2f')} dB, cosine {_fmt(best.get('cosine_vs_stock'), '.5f')}")
        full = next((r for r in rows if r["id"] == best.get("full_reference")), None)
        if full is not None and full is not best and full.get("speedup_vs_stock"):
            line += (f". Of the speedup, {full['speedup_vs_stock']:.2f}× comes from backend+precision "
                     f"(`{full['id']}` vs stock) and {best['speedup_vs_full']:.2f}× from caching "
                     f"(theoretical {_fmt(best.get('theoretical_speedup'))}×, efficiency "
                     f"{_fmt(best.get('efficiency'))}); caching "
                     f"alone moves the latents to PSNR {_fmt(best.get('psnr_vs_full_db'), '.2f')} dB vs `{full['id']}`")
        lines.append(line + ".")
    return lines


def write_markdown(path: Path, document: Mapping[str, Any]) -> None:
    m = document["machine"]
    v = m["versions"]
    c = document["config"]
    lines = [
        f"# Benchmark `{c['name']}`: {c['model']}",
        "",
        f"- **command**: `{document['command']}`",
        f"- **date**: {m['date_utc']}",
        f"- **machine**: {m['cpu']}, {m['cores']} cores ({m.get('usable_cores')} usable), "
        f"{(m.get('memory_bytes') or 0) / 2**30:.1f} GiB RAM" + (f", GPU {m['gpu']} (CUDA {m.get('cuda')})"
                                                                  if m.get("gpu") else ""),
        f"- **load average at start / end**: {document.get('load_average_start')} / {document.get('load_average_end')}",
        f"- **versions**: torch {v.get('torch')}, diffusers {v.get('diffusers')}, onnxruntime {v.get('onnxruntime')}, "
        f"onnx {v.get('onnx')}, tensorrt {v.get('tensorrt')}, ditcache {v.get('ditcache')}",
        f"- **request**: {c['images']} image(s) (classes {c['class_labels']}), guidance {c['guidance']} "
        f"(model batch {c['model_batch']}), {c['scheduler']}, seed {c['seed']}, device {c['device']}, "
        f"threads {c['threads'] or 'default'}; weights: {c['weights_note']}",
        f"- **protocol**: each row in its own process; warm-up `{c['warmup']}` and build/compile excluded from "
        f"latency and reported separately; latency = median over {c['repeats']} timed run(s) "
        f"(min–max in brackets); per-step = median time of the denoiser call per variant (Dispatcher.timing / "
        f"transformer hooks for the stock pipeline). Compiled rows: export-engines ({c['granularity']} "
        f"granularity by default) in a separate process, then load_engines; inductor compile cache: "
        f"{c.get('inductor_cache')}.",
        f"- **baseline**: {document['baseline_note']}",
        f"- **fidelity**: {document['fidelity_note']}",
        f"- **memory**: {document['memory_note']}",
    ]
    if document.get("peers_note"):
        lines.append(f"- **peers**: {document['peers_note']}")
    for warning in document.get("warnings", []):
        lines.append(f"- **WARNING**: {warning}")
    if c.get("description"):
        lines += ["", c["description"]]
    answer = headline(document["rows"])
    if answer:
        lines += ["", "## How much faster than the stock pipeline, and what it costs", ""] + answer
    lines += ["", markdown_table(document["rows"]), ""]
    notes = [(r["id"], n) for r in document["rows"] for n in r.get("notes", [])]
    if notes:
        lines += ["## Notes", ""] + [f"- `{i}`: {n}" for i, n in notes] + [""]
    lines += ["Speedup vs MACs: `speedup_vs_macs.png`; every field: `results.json` / `results.csv`.", ""]
    write_atomic(path, repo_relative("\n".join(lines)), mkdir=True)


MARKERS = {"diffusers": "s", "eager": "o", "inductor": "^", "onnxruntime": "D", "tensorrt": "P", "fbc": "X",
           "dbcache": "*"}  # peers: by method, with or without +compile
COLORS = {"fp32": "tab:blue", "fp16": "tab:orange", "bf16": "tab:green"}


def plot_speedup(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    """Measured speedup (vs the same backend+precision full schedule) against the MAC fraction."""
    plt = pyplot("the speedup plot")
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(7, 5))
    points = [r for r in rows if r["status"] == "ok" and r.get("speedup_vs_full") is not None
              and r.get("mac_fraction") is not None]
    low = min([r["mac_fraction"] for r in points] + [0.5])
    xs = [low * 0.95 + i * (1.02 - low * 0.95) / 100 for i in range(101)]
    ax.plot(xs, [1 / x for x in xs], "k--", lw=1, label="ideal (speedup = 1 / MAC fraction)")
    seen = set()
    for r in points:
        key = (r["backend"], r["precision"])
        ax.scatter(r["mac_fraction"], r["speedup_vs_full"], marker=MARKERS.get(r["backend"].split("+")[0], "v"),
                   color=COLORS.get(r["precision"], "gray"), s=60, edgecolor="black", linewidth=0.5,
                   label=f"{r['backend']} {r['precision']}" if key not in seen else None, zorder=3)
        seen.add(key)
        if r["schedule_kind"] != "full":
            ax.annotate(r["schedule"], (r["mac_fraction"], r["speedup_vs_full"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("MAC fraction of the full schedule (same steps)")
    ax.set_ylabel("measured speedup vs same backend+precision full")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, mkdir=True) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
