"""One row of the peer comparison in its own process (cache-dit patches classes; torch.compile state is global).

``python -m ditcache.benchmarks.peer_worker --job JOB.json --result OUT.json``; the job (written by compare_peers)
names the row, the model and weights, the sampling settings and the phase:

* ``eager``: the quality samples (N class-balanced images, per-sample seeds as eval_quality, leaf-layer call
  counting on; Inception features when FID is asked for; written to ``work_file``), then the eager latency of the
  timing batch (counting hooks removed; warm-up runs, then timed runs).
* ``compile``: a fresh model, the method with torch.compile (peers: ``torch.compile(transformer)``; ditcache: its
  inductor backend, one ``fullgraph=True`` graph per step variant as export-engines builds it), dynamo's counters
  before and after the warm-up run (graph breaks, graphs, recompilations) and after the timed runs (any
  recompilation there is a steady-state cost).

Progress lines on stderr start with ``bench:``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ditcache.compiler.atomic import write_atomic

from .bench_worker import log, run_phase, skip_random_init


def _model(job: dict):
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(job["model"])
    with skip_random_init():
        model, _ = load_model(spec, job.get("weights"))
    return model.eval(), spec


def _row(job: dict) -> dict[str, Any]:
    row = dict(job["row"])
    if row["method"] == "ditcache":
        from ditcache.graphs import load_schedule, parse_schedule

        ref = row["schedule"]
        row["schedule"] = load_schedule(ref) if isinstance(ref, str) else parse_schedule(ref, source=row["name"])
    return row


def _request(job: dict, labels, seed: int, sample_seeds=None):
    from ditcache.compiler.runtime.sampling import SampleRequest

    return SampleRequest(tuple(int(c) for c in labels), int(job["steps"]), float(job["guidance"]), int(seed),
                         job["scheduler"], sample_seeds=None if sample_seeds is None else tuple(sample_seeds))


def _calibration(job: dict):
    cal = job.get("calibration") or {}
    return _request(job, cal.get("classes", [0, 1]), cal.get("seed", 12345))


def _timed(method, spec, request, warmup: int, repeats: int) -> tuple[list[float], float]:
    from .peers import run_sampling

    t0 = time.perf_counter()
    for _ in range(warmup):
        run_sampling(method, spec, request)
    warm = time.perf_counter() - t0
    runs = []
    for i in range(repeats):
        t0 = time.perf_counter()
        run_sampling(method, spec, request)
        runs.append(time.perf_counter() - t0)
        log(f"run {i + 1}/{repeats}: {runs[-1]:.2f} s")
    return runs, warm


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue(), mkdir=True)


def phase_eager(job: dict) -> dict:
    from ditcache.images import decode, to_uint8

    from .eval_quality import balanced_classes, sample_seed
    from .peers import CallCounter, count_summary, install, run_sampling

    model, spec = _model(job)
    row = _row(job)
    result: dict[str, Any] = {"status": "ok", "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()
    method = install(row, model, spec, int(job["steps"]), calibration=_calibration(job))
    result["setup_s"] = time.perf_counter() - t0
    counter = CallCounter(model)
    quality = job.get("quality")
    if quality:
        n, batch, seed = int(quality["n"]), int(quality["batch_size"]), int(quality.get("seed", 0))
        labels = balanced_classes(n, spec.num_classes)
        images, samples, feats = [], [], []
        t0 = time.perf_counter()
        runs = 0
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            request = _request(job, labels[start:stop], seed, [sample_seed(seed, i) for i in range(start, stop)])
            out = run_sampling(method, spec, request).float()
            runs += 1
            samples.append(out.numpy())
            pixels = decode(out, spec)
            if pixels is not None:
                images.append(pixels.numpy())
                if quality.get("fid"):
                    from .fid import inception_features

                    feats.append(inception_features(to_uint8(pixels)))
            log(f"quality {stop}/{n}")
        result["quality_s"] = time.perf_counter() - t0
        # counts: every quality batch is one sampling run of `batch` images (the last may be smaller)
        result["counts"] = count_summary(counter.calls, spec, batch if n >= batch else n, runs)
        result["counts"]["source"] = f"counted over the {runs} quality sampling runs"
        arrays = {"samples": np.concatenate(samples)}
        if images:
            arrays["images"] = np.concatenate(images)
        if feats:
            arrays["features"] = np.concatenate(feats)
        _save(Path(job["work_file"]), arrays)
        result["work_file"] = job["work_file"]
    timing = job["timing"]
    request = _request(job, timing["classes"], job.get("seed", 0))
    if not quality:  # count on one timing-batch run, whose samples are the fidelity check
        out = run_sampling(method, spec, request).float()
        result["counts"] = count_summary(counter.calls, spec, len(timing["classes"]), 1)
        result["counts"]["source"] = "counted on one run of the timing batch"
        _save(Path(job["work_file"]), {"samples": out.numpy()})
        result["work_file"] = job["work_file"]
    counter.remove()
    result["info"] = method.info()
    result["notes"] = list(method.notes)
    if int(timing.get("repeats", 0)) > 0:
        result["loadavg_timing"] = os.getloadavg()
        runs, warm = _timed(method, spec, request, int(timing.get("warmup", 1)), int(timing["repeats"]))
        result.update(eager_runs_s=runs, eager_median_s=float(np.median(runs)), eager_warmup_s=warm)
        if "adaptive_runs" in result["info"]:  # the timing batch decides for itself: its runs are recorded too
            result["info"] = method.info()
    method.remove()
    return result


def phase_compile(job: dict) -> dict:
    from .peers import dynamo_counts, graph_break_reasons, install

    model, spec = _model(job)
    row = _row(job)
    torch._dynamo.reset()
    result: dict[str, Any] = {"status": "ok", "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg()}
    method = install(row, model, spec, int(job["steps"]), compiled=True, calibration=_calibration(job))
    timing = job["timing"]
    request = _request(job, timing["classes"], job.get("seed", 0))
    before = dynamo_counts()
    from .peers import run_sampling

    t0 = time.perf_counter()
    run_sampling(method, spec, request)  # compiles
    result["compile_warmup_s"] = time.perf_counter() - t0
    warm = dynamo_counts()
    log(f"compiled warm-up {result['compile_warmup_s']:.1f} s: {warm}")
    runs, _ = _timed(method, spec, request, 0, int(job.get("compile_repeats", timing.get("repeats", 3))))
    after = dynamo_counts()
    result.update(
        compiled_runs_s=runs, compiled_median_s=float(np.median(runs)),
        graph_breaks=warm["graph_breaks"] - before["graph_breaks"],
        graphs=warm["unique_graphs"] - before["unique_graphs"],
        recompiles=warm["recompiles"] - before["recompiles"],
        steady_graph_breaks=after["graph_breaks"] - warm["graph_breaks"],
        steady_graphs=after["unique_graphs"] - warm["unique_graphs"],
        steady_recompiles=after["recompiles"] - warm["recompiles"],
        graph_break_reasons=graph_break_reasons(),
        notes=list(method.notes),
        info=method.info(),  # adaptive rows: the compiled runs' decisions
    )
    method.remove()
    return result


PHASES = {"eager": phase_eager, "compile": phase_compile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    return run_phase(PHASES[job["phase"]], job, Path(args.result))


if __name__ == "__main__":
    sys.exit(main())
