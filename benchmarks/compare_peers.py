"""ditcache's schedules next to diffusers' cache hooks, cache-dit and SmoothCache, measured in one run on the same work.

One command runs every row of a peers config (benchmarks/configs/peers-*.yaml) in its own processes
(``peer_worker``: an eager phase with the quality samples, counted block calls and eager latency; a compile phase
for the rows under ``compile.rows``), on the same model, scheduler, steps, guidance, batch and seeds (ditcache's
own sampling loop for everyone), then compares each row with the ``full`` row: PSNR / cosine of the samples,
FID (when the config asks for it, on the reference model dit-fmnist), blocks actually run and the MACs that
follow, eager and compiled latency, graph breaks and recompilations. A row that fails gets its error.

Writes ``benchmarks/results/<config name>/``: results.json, results.md, pareto.png.

Examples:
    python -m ditcache.benchmarks.compare_peers --config benchmarks/configs/peers-fmnist.yaml
    python -m ditcache.benchmarks.compare_peers --config benchmarks/configs/peers-tiny.yaml --out-dir /tmp/peers
    python -m ditcache.benchmarks.compare_peers --config benchmarks/configs/peers-dit-xl.yaml --dry-run
    python -m ditcache.benchmarks.compare_peers --config benchmarks/configs/peers-fmnist.yaml --resume --only fbc
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ditcache.compiler.atomic import write_atomic
from ditcache.graphs.schedule import read_yaml_document

from .bench_config import ConfigError
from .eval_quality import REPO_ROOT, SCHEDULES, machine_info, per_image_psnr, per_sample_cosine
from .peer_plot import plot_pareto
from .peer_report import markdown
from .peers import FAMILIES, METHODS, cache_dit_unavailable, peer_unavailable
from .paths import repo_relative

_TOP = {"name", "description", "model", "weights", "random_weights", "steps", "scheduler", "guidance", "seed",
        "threads", "quality", "timing", "compile", "calibration", "row_timeout_s", "rows"}


def _progress(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# ---- config -----------------------------------------------------------------------------------------------
def load_peers_config(path: str | Path) -> dict[str, Any]:
    """Read and check a peers config; ditcache rows' schedules resolve to a mapping or a file path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist (see benchmarks/configs/peers-*.yaml)")
    cfg = read_yaml_document(path, ConfigError, "peers config")
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a peers config is a mapping")
    unknown = sorted(set(cfg) - _TOP)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP))})")
    for key in ("model", "steps", "rows", "timing"):
        if key not in cfg:
            raise ConfigError(f"{path}: {key!r} is required")
    cfg.setdefault("name", path.stem)
    cfg.setdefault("scheduler", "ddim")
    cfg.setdefault("guidance", 1.5)
    cfg.setdefault("seed", 0)
    cfg.setdefault("row_timeout_s", 3600)
    cfg["source"] = str(path)
    names = set()
    from ditcache.graphs import load_schedule, parse_schedule

    for row in cfg["rows"]:
        if row.get("method") not in METHODS:
            raise ConfigError(f"{path}: row {row.get('name')!r}: method must be one of {', '.join(METHODS)}")
        if row["name"] in names:
            raise ConfigError(f"{path}: row name {row['name']!r} appears twice")
        names.add(row["name"])
        if row["method"] == "ditcache":
            ref = row.get("schedule")
            if isinstance(ref, str) and ref in SCHEDULES:
                ref = SCHEDULES[ref][1]
                ref = str(REPO_ROOT / ref) if isinstance(ref, str) else ref
            elif isinstance(ref, str):
                ref = str((path.parent / ref).resolve()) if not Path(ref).is_absolute() else ref
                if _not_made_yet(ref):  # a calibrated schedule that its folder's make.sh writes: a skipped row
                    row.update(schedule=ref, unavailable=_not_made_yet(ref))
                    continue
            if ref is None:
                raise ConfigError(f"{path}: ditcache row {row['name']!r} needs 'schedule'")
            schedule = load_schedule(ref) if isinstance(ref, str) else parse_schedule(dict(ref), source=row["name"])
            if schedule.steps != cfg["steps"]:
                raise ConfigError(f"{path}: row {row['name']!r}: schedule has {schedule.steps} steps, config {cfg['steps']}")
            row["schedule"] = ref
    if "full" not in names:
        raise ConfigError(f"{path}: a row named 'full' (method ditcache, schedule full) is the reference")
    compile_cfg = cfg.get("compile") or {}
    if compile_cfg.get("rows") == "all":  # every row gets the torch.compile phase
        compile_cfg["rows"] = [row["name"] for row in cfg["rows"]]
    if not isinstance(compile_cfg.get("rows", []), list):
        raise ConfigError(f"{path}: compile.rows is a list of row names or 'all'")
    for name in compile_cfg.get("rows", []):
        if name not in names:
            raise ConfigError(f"{path}: compile.rows names {name!r}, which is not a row")
    return cfg


def _not_made_yet(ref: str) -> str | None:
    """Why the schedule file ``ref`` is missing when the ``make.sh`` beside it writes it (None otherwise)."""
    maker = Path(ref).parent / "make.sh"
    if Path(ref).is_file() or not maker.is_file() or Path(ref).name not in maker.read_text():
        return None
    return f"schedule {Path(ref).name} not made yet for these weights: bash {repo_relative(str(maker))}"


def _weights(cfg: dict[str, Any], cache: Path, quiet: bool) -> str | None:
    """The weights file rows load: the config's path, the shipped weights (None), or random weights made once."""
    if cfg.get("random_weights"):
        from .run_benchmarks import run_worker

        path = cache / "weights" / f"{cfg['model']}-random-seed0.safetensors"
        if not path.is_file():
            _progress(f"creating random {cfg['model']} weights once: {path}", quiet)
            result = run_worker("weights", {"model": cfg["model"], "seed": 0, "out": str(path)}, cache / "weights",
                                cfg["row_timeout_s"], "", quiet)
            if result["status"] != "ok":
                raise RuntimeError(f"could not create random weights: {result['status']}")
        return str(path)
    weights = cfg.get("weights")
    if weights is None:
        return None
    w = Path(weights)
    return str(w if w.is_absolute() else (Path(cfg["source"]).parent / w).resolve())


# ---- workers ----------------------------------------------------------------------------------------------
def run_peer_worker(job: dict[str, Any], work: Path, timeout: float, prefix: str, quiet: bool) -> dict[str, Any]:
    """One peer_worker process; its log in ``<work>/<phase>.log``."""
    work.mkdir(parents=True, exist_ok=True)
    phase = job["phase"]
    job_file, result_file, log_file = work / f"{phase}.job.json", work / f"{phase}.result.json", work / f"{phase}.log"
    result_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps(job, indent=2, default=str))
    env = dict(os.environ)
    if job.get("threads"):
        env["OMP_NUM_THREADS"] = str(job["threads"])
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work.parent.parent / "inductor-cache")
    command = [sys.executable, "-m", "ditcache.benchmarks.peer_worker", "--job", str(job_file), "--result",
               str(result_file)]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"status": f"failed: {phase} killed after {timeout:.0f} s (row_timeout_s; see {log_file})"}
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        result = {"status": f"failed: worker exited with {process.returncode} (see {log_file})"}
    result["wall_s"] = time.perf_counter() - start
    result["log"] = str(log_file)
    _progress(f"{prefix} {phase}: {result['status']} ({result['wall_s']:.0f} s)", quiet)
    return result


def _key(job: dict[str, Any]) -> str:
    data = {k: v for k, v in job.items() if k not in ("work_file",)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_row(cfg: dict[str, Any], row: dict[str, Any], weights: str | None, work: Path, args) -> dict[str, Any]:
    """Eager (and compiled) phases of one row; cached results are reused with --resume when nothing changed."""
    row_dir = work / "rows" / row["name"]
    base = {"row": row, "model": cfg["model"], "weights": weights, "steps": cfg["steps"],
            "scheduler": cfg["scheduler"], "guidance": cfg["guidance"], "seed": cfg["seed"],
            "threads": cfg.get("threads"), "timing": cfg["timing"], "calibration": cfg.get("calibration"),
            "torch": __import__("torch").__version__}
    out: dict[str, Any] = {}
    phases = [("eager", {"quality": cfg.get("quality"), "work_file": str(row_dir / "quality.npz")})]
    compile_cfg = cfg.get("compile") or {}
    if row["name"] in compile_cfg.get("rows", []) and not args.no_compile:
        extra = {"compile_repeats": compile_cfg.get("repeats", 3)}
        if row["method"] == "ditcache":
            # only enters the cache key (peers.py always compiles ditcache's rows per variant, as export-engines
            # does): results of the earlier per-segment compile are not reused by --resume
            extra["ditcache_granularity"] = "variant"
        phases.append(("compile", extra))
    for phase, extra in phases:
        job = {**base, **extra, "phase": phase}
        key = _key(job)
        cached = row_dir / f"{phase}.row.json"
        if args.resume and cached.is_file():
            previous = json.loads(cached.read_text())
            if previous.get("key") == key and previous.get("status") == "ok" and (
                    phase != "eager" or not job.get("quality") or Path(job["work_file"]).is_file()):
                _progress(f"[{row['name']}] {phase}: reusing {cached} (--resume)", args.quiet)
                out[phase] = previous
                continue
        reason = row.get("unavailable") or peer_unavailable(row["method"])  # cache-dit, SmoothCache, make.sh
        if reason:
            out[phase] = {"status": f"skipped: {reason}"}
            continue
        result = run_peer_worker(job, row_dir, cfg["row_timeout_s"], f"[{row['name']}]", args.quiet)
        result["key"] = key
        result["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_atomic(cached, json.dumps(result, indent=2, default=str))
        out[phase] = result
    return out


# ---- metrics ----------------------------------------------------------------------------------------------
def _load_work(path: str | None) -> dict[str, np.ndarray] | None:
    if not path or not Path(path).is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def fidelity(work: dict[str, np.ndarray], full: dict[str, np.ndarray]) -> dict[str, float | None]:
    """PSNR (pixel models: images in [0, 1]; latent models: data range of the reference) and cosine vs full."""
    if "images" in work and "images" in full:
        a, b, peak = work["images"], full["images"], 1.0
    else:
        a, b = work["samples"], full["samples"]
        peak = float(b.max() - b.min())
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return {"psnr_vs_full_db": None if mse == 0 else float(10 * np.log10(peak ** 2 / mse)),
            "psnr_vs_full_mean_db": float(np.mean([p for p in per_image_psnr(a / peak, b / peak) if np.isfinite(p)]))
            if mse else None,
            "cosine_vs_full": float(per_sample_cosine(work["samples"], full["samples"]).mean())}


def assemble(cfg: dict[str, Any], measured: dict[str, dict[str, Any]], quiet: bool) -> dict[str, Any]:
    """The results record: one row per config row with every column (None where not measured)."""
    rows = []
    works = {name: _load_work(m.get("eager", {}).get("work_file")) for name, m in measured.items()}
    full_eager = measured["full"].get("eager", {}).get("eager_median_s")
    full_compiled = measured["full"].get("compile", {}).get("compiled_median_s")
    fid_info = None
    quality = cfg.get("quality") or {}
    features = {n: w["features"] for n, w in works.items() if w is not None and "features" in w}
    if quality.get("fid") and "full" in features:
        from . import fid as fidlib
        from .eval_quality import paired_bootstrap_fid

        n = int(quality["n"])
        ref = fidlib.real_features("test", n)
        floor = fidlib.real_vs_real(n)["fid_train_vs_test"]
        draws = int(quality.get("bootstrap", 10))
        boot = paired_bootstrap_fid(features, ref, draws, int(quality.get("seed", 0)), False) if draws > 1 else {}
        fid_info = {**fidlib.package_info(), "floor": floor, "n": n, "bootstrap_draws": draws,
                    "reference": f"Fashion-MNIST test, first N/10 per class (N={n})"}
        fids = {name: fidlib.fid_from_features(f, ref) for name, f in features.items()}
    for spec_row in cfg["rows"]:
        name = spec_row["name"]
        m = measured.get(name, {})
        eager, comp = m.get("eager", {}), m.get("compile")
        counts = eager.get("counts") or {}
        status = eager.get("status", "not run")
        if comp is not None and comp.get("status") != "ok" and status == "ok":
            status = f"eager ok; compile {comp.get('status')}"
        row = {
            "name": name, "method": spec_row["method"], "family": FAMILIES[spec_row["method"]],
            "params": {k: v for k, v in spec_row.items() if k not in ("name", "method")},
            "status": status,
            "blocks_run_per_run": counts.get("blocks_run_per_run"), "attn_run_per_run": counts.get("attn_run_per_run"),
            "blocks_full_per_run": counts.get("blocks_full_per_run"), "gmacs_per_image": counts.get("gmacs_per_image"),
            "mac_speedup": 1 / counts["mac_fraction"] if counts.get("mac_fraction") else None,
            "blocks_per_step": counts.get("blocks_per_step_first_run"), "counts_source": counts.get("source"),
            "blocks_run_each_run": counts.get("blocks_run_each_run"),
            "eager_median_s": eager.get("eager_median_s"), "eager_runs_s": eager.get("eager_runs_s"),
            "loadavg_1m": (eager.get("loadavg_timing") or eager.get("loadavg_start") or [None])[0],
            "compiled_median_s": None, "compile_warmup_s": None, "graph_breaks": None, "graphs": None,
            "recompiles": None, "steady_recompiles": None, "steady_graph_breaks": None,
            "info": eager.get("info"), "notes": list(eager.get("notes") or []),
            "error": None if status == "ok" or status.startswith("eager ok") else status,
        }
        if eager.get("traceback"):
            row["traceback_tail"] = eager["traceback"][-800:]
        row["eager_speedup"] = full_eager / row["eager_median_s"] if full_eager and row["eager_median_s"] else None
        if comp is not None and comp.get("status") == "ok":
            row.update({k: comp.get(k) for k in ("compiled_median_s", "compile_warmup_s", "graph_breaks", "graphs",
                                                 "recompiles", "steady_recompiles", "steady_graph_breaks",
                                                 "graph_break_reasons")})
            row["compiled_runs_s"] = comp.get("compiled_runs_s")
            row["compiled_info"] = comp.get("info")
            row["notes"] += [n for n in comp.get("notes", []) if n not in row["notes"]]
        row["compiled_speedup"] = (full_compiled / row["compiled_median_s"]
                                   if full_compiled and row["compiled_median_s"] else None)
        row["compiled_vs_full_eager"] = (full_eager / row["compiled_median_s"]
                                         if full_eager and row["compiled_median_s"] else None)
        work, full = works.get(name), works.get("full")
        row.update({"psnr_vs_full_db": None, "psnr_vs_full_mean_db": None, "cosine_vs_full": None, "fid": None,
                    "fid_boot_std": None, "fid_delta_vs_full": None, "fid_delta_boot_std": None})
        if work is not None and full is not None:
            row.update(fidelity(work, full))
        if fid_info and name in fids:
            row.update(fid=fids[name], fid_delta_vs_full=fids[name] - fids["full"],
                       fid_boot_std=boot.get(name, {}).get("fid_boot_std"),
                       fid_delta_boot_std=boot.get(name, {}).get("fid_delta_boot_std"))
        row["eager_per_mac"] = (row["eager_speedup"] / row["mac_speedup"]
                                if row["eager_speedup"] and row["mac_speedup"] else None)
        rows.append(row)
    random_weights = bool(cfg.get("random_weights"))
    _dominance(rows, quality_comparable=not random_weights)
    return {"name": cfg["name"], "model": cfg["model"], "config": cfg["source"], "steps": cfg["steps"],
            "random_weights": random_weights,
            "scheduler": cfg["scheduler"], "guidance": cfg["guidance"], "seed": cfg["seed"],
            "quality": cfg.get("quality"), "timing": cfg["timing"], "compile": cfg.get("compile"),
            "fid": fid_info, "machine": machine_info(), "rows": rows}


def _dominance(rows: list[dict[str, Any]], quality_comparable: bool) -> None:
    """For each peer row: the ditcache rows at least as fast (measured, eager and compiled apart) with quality at
    least as good (FID, else PSNR). Without comparable quality (random weights: a peer that never caches is
    "perfect") nothing is matched and every ``matched_by_*`` stays None."""
    if not quality_comparable:
        for r in rows:
            if r["method"] != "ditcache":
                r["matched_by_eager"] = r["matched_by_compiled"] = None
        return
    ours = [r for r in rows if r["method"] == "ditcache" and r["name"] != "full" and r["error"] is None]

    def better(a, b) -> bool:
        if a["fid"] is not None and b["fid"] is not None:
            return a["fid"] <= b["fid"]
        return a["psnr_vs_full_db"] is not None and b["psnr_vs_full_db"] is not None and \
            a["psnr_vs_full_db"] >= b["psnr_vs_full_db"]

    for r in rows:
        if r["method"] == "ditcache":
            continue
        for mode in ("eager", "compiled"):
            key = f"{mode}_speedup"
            if r.get(key) is None:
                r[f"matched_by_{mode}"] = None
                continue
            r[f"matched_by_{mode}"] = [o["name"] for o in ours if o.get(key) is not None and o[key] >= r[key]
                                       and better(o, r)]


# ---- main -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ditcache.benchmarks.compare_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="peers config (benchmarks/configs/peers-*.yaml)")
    parser.add_argument("--out-dir", help="results folder (default benchmarks/results/<config name>)")
    parser.add_argument("--cache-dir", help="work files (default $DITCACHE_BENCH_CACHE or ~/.cache/ditcache/bench)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING", help="run only rows whose name contains one of "
                        "these (others come from --resume's cache or are left out); full always runs")
    parser.add_argument("--resume", action="store_true", help="reuse rows measured earlier with identical settings")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile phase")
    parser.add_argument("--dry-run", action="store_true", help="print the rows and exit")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_peers_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from .run_benchmarks import default_cache_dir

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    work = cache / cfg["name"]
    out = Path(args.out_dir) if args.out_dir else REPO_ROOT / "benchmarks" / "results" / cfg["name"]
    compile_rows = set((cfg.get("compile") or {}).get("rows", []))
    if args.dry_run:
        for row in cfg["rows"]:
            flags = " +compile" if row["name"] in compile_rows and not args.no_compile else ""
            reason = row.get("unavailable") or peer_unavailable(row["method"])
            skip = f"  [skipped: {reason}]" if reason else ""
            params = {k: v for k, v in row.items() if k not in ("name", "method")}
            print(f"{row['name']:<28} {row['method']:<12} {json.dumps(params, default=str)[:90]}{flags}{skip}")
        return 0
    weights = _weights(cfg, cache, args.quiet)
    measured: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for row in cfg["rows"]:
        selected = args.only is None or row["name"] == "full" or any(s in row["name"] for s in args.only)
        if not selected:
            if not args.resume:
                continue
        run_args = args if selected else argparse.Namespace(**{**vars(args), "resume": True})
        if not selected:  # reuse only, never run
            row_dir = work / "rows" / row["name"]
            got = {p: json.loads((row_dir / f"{p}.row.json").read_text()) for p in ("eager", "compile")
                   if (row_dir / f"{p}.row.json").is_file()}
            if got:
                measured[row["name"]] = got
            continue
        _progress(f"[{row['name']}] {row['method']} (load {os.getloadavg()[0]:.1f})", args.quiet)
        measured[row["name"]] = run_row(cfg, row, weights, work, run_args)
    cfg_rows = [r for r in cfg["rows"] if r["name"] in measured]
    record = assemble({**cfg, "rows": cfg_rows}, measured, args.quiet)
    record["command"] = "python -m ditcache.benchmarks.compare_peers " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    record["total_s"] = time.perf_counter() - started
    record["cache_dit"] = cache_dit_unavailable() or "cache-dit 1.5.3"
    record["smoothcache"] = peer_unavailable("smoothcache") or "dit-smoothcache 0.1.1"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "results.json", repo_relative(json.dumps(record, indent=2, default=str) + "\n"))
    write_atomic(out / "results.md", repo_relative(markdown(record)))
    plot_pareto(record, out / "pareto.png")
    _progress(f"wrote {out}/results.json, results.md, pareto.png ({record['total_s']:.0f} s)", args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
