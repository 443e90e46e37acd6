"""The cold-start process of the engines benchmark: a fresh interpreter, one engine directory, first latents.

``python -m ditcache.benchmarks.engines_worker --phase coldstart --job JOB.json --result OUT.json`` records
the wall clock at its first line, imports torch, diffusers and ditcache, loads every variant of the row's plan
(an engine directory through ``load_engines``, or the eager model), samples once (the first latents: JIT
backends compile here), then times ``repeats`` more sampling runs with the dispatcher's per-step timing.
Its peak RSS (/proc/self/status VmHWM; getrusage ru_maxrss beside it), read then, is that of a process holding
every variant.
Last, the same loaded engines sample each size of ``batch_check`` once. The parent
(benchmarks/engines_bench.py) subtracts the time it started the process from ``first_latents_unix``.
"""

from __future__ import annotations

import time

STARTED_UNIX = time.time()  # before any heavy import: the process's own start, as close as Python allows

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import diffusers  # noqa: E402,F401 - every sampling run imports it: count it with the imports, not the first run
import torch  # noqa: E402

from ditcache.benchmarks.bench_config import RowSpec  # noqa: E402
from ditcache.benchmarks.bench_worker import (  # noqa: E402
    BYTES_PER, DispatcherRunner, log, parameter_count, peak_rss_since_reset, process_peak_rss, rss_bytes, run_phase,
    skip_random_init,
)
from ditcache.compiler.atomic import atomic_path  # noqa: E402

IMPORTED_UNIX = time.time()
IMPORTED_RSS = rss_bytes()


def _dispatcher(row: RowSpec, job: dict[str, Any], spec, schedule, plan, dtype: torch.dtype):
    """The row's dispatcher with every variant loaded, its parameter count and weight bytes."""
    if row.kind == "ditcache-eager":
        from ditcache.compiler.runtime.runner import eager_dispatcher
        from ditcache.graphs.weights import load_model

        with skip_random_init():
            model, _ = load_model(spec, row.weights)
        model = model.to(torch.device(row.device), dtype).eval()
        count = sum(p.numel() for p in model.parameters())
        return eager_dispatcher(model, spec, plan), count, sum(p.numel() * p.element_size() for p in model.parameters())
    from ditcache.export.load import load_engines

    with skip_random_init():
        loaded = load_engines(job["engines_dir"], weights=row.weights, device=row.device, schedule=schedule,
                              images=row.num_images, guidance=row.guidance > 1, precision=row.precision,
                              backend=row.backend)
    count = parameter_count(row.weights)
    return loaded.dispatcher, count, None if count is None else count * BYTES_PER[row.precision]


def phase_coldstart(job: dict[str, Any]) -> dict[str, Any]:
    """Load every variant, sample once (first latents), then the timed runs; memory of the whole process."""
    from ditcache.compiler.backend import BuildSettings
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import at_resolution, get_spec
    from ditcache.graphs.schedule import load_schedule

    row = RowSpec.from_dict(job["row"])
    if row.threads:
        torch.set_num_threads(row.threads)
    spec = at_resolution(get_spec(row.model), row.resolution)
    schedule = load_schedule(job["schedule_file"])
    plan = plan_for(schedule, spec)
    dtype = BuildSettings(row.precision, row.device).dtype

    start = time.perf_counter()
    dispatcher, param_count, weights_bytes = _dispatcher(row, job, spec, schedule, plan, dtype)
    load_s = time.perf_counter() - start
    rss_loaded = rss_bytes()
    log(f"loaded {len(dispatcher.variants)} variants in {load_s:.1f} s")

    runner = DispatcherRunner(row, spec, plan, dispatcher, dtype)
    # each image's noise from its own seed, so that image 0 of another batch size is this run's image 0
    runner.request = replace(runner.request, sample_seeds=tuple(row.seed + i for i in range(row.num_images)))
    runner.timing = True
    start = time.perf_counter()
    latents = runner.run()
    first_run_s = time.perf_counter() - start
    first_latents_unix = time.time()
    first_steps = runner.step_seconds()
    log(f"first latents after {first_run_s:.1f} s of sampling")

    runs: list[float] = []
    steps: dict[str, list[float]] = {}
    for i in range(int(job.get("repeats", 1))):
        start = time.perf_counter()
        latents = runner.run()
        runs.append(time.perf_counter() - start)
        for name, seconds in runner.step_seconds().items():
            steps.setdefault(name, []).extend(seconds)
        log(f"run {i + 1}: {runs[-1]:.2f} s")
    runner.timing = False
    latents = latents.detach().float().cpu()
    with atomic_path(job["latents_file"], mkdir=True) as tmp:
        torch.save(latents, tmp)
    # before the batch check's larger activations. VmHWM (never reset here) is this process's own peak; ru_maxrss
    # also counts the parent's pages between fork and exec, so it can exceed it (seen: a 475 MB pytest parent)
    hwm, ru_maxrss = peak_rss_since_reset(), process_peak_rss()
    return {
        "status": "ok",
        "started_unix": STARTED_UNIX,
        "import_s": IMPORTED_UNIX - STARTED_UNIX,
        "load_s": load_s,
        "first_run_s": first_run_s,
        "first_latents_unix": first_latents_unix,
        "first_run_step_seconds": first_steps,
        "runs_s": runs,
        "step_seconds": steps,
        "variants_loaded": sorted(dispatcher.variants),
        "rss_imported_bytes": IMPORTED_RSS,
        "rss_loaded_bytes": rss_loaded,
        "peak_rss_bytes": hwm if hwm is not None else ru_maxrss,
        "peak_rss_source": "VmHWM" if hwm is not None else "ru_maxrss",
        "ru_maxrss_bytes": ru_maxrss,
        "param_count": param_count,
        "weights_bytes": weights_bytes,
        "threads": torch.get_num_threads(),
        "latents_file": job["latents_file"],
        "latents_shape": list(latents.shape),
        "batch": [batch_run(runner, size, latents) for size in job.get("batch_check", ())],
    }


def batch_run(runner: DispatcherRunner, size: int, latents: torch.Tensor) -> dict[str, Any]:
    """One sampling run of ``size`` images through the loaded engines (labels cycled, per-image seeds); image 0
    against the row's own image 0 (how a request is split must not change an image)."""
    labels = runner.request.class_labels
    request = runner.request
    runner.request = replace(request, class_labels=tuple(labels[i % len(labels)] for i in range(size)),
                             sample_seeds=tuple(runner.row.seed + i for i in range(size)))
    runner.timing = True
    try:
        start = time.perf_counter()
        out = runner.run().detach().float().cpu()
        seconds = time.perf_counter() - start
        log(f"batch {size}: {seconds:.2f} s")
        return {"images": size, "status": "ok", "run_s": seconds, "step_seconds": runner.step_seconds(),
                "shape": list(out.shape), "peak_rss_bytes": peak_rss_since_reset(),
                "image0_max_abs_vs_row": float((out[:1] - latents[:1]).abs().max())}
    except Exception as exc:  # noqa: BLE001 - a refused or failing size is the result
        return {"images": size, "status": f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:400]}
    finally:
        runner.timing, runner.request = False, request


PHASES = {"coldstart": phase_coldstart}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", required=True, choices=sorted(PHASES))
    parser.add_argument("--job", required=True, help="job JSON written by engines_bench")
    parser.add_argument("--result", required=True, help="result JSON to write")
    args = parser.parse_args(argv)
    return run_phase(PHASES[args.phase], json.loads(Path(args.job).read_text()), Path(args.result))


if __name__ == "__main__":
    sys.exit(main())
