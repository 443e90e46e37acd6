"""Interleaved A/B latency of engine directories: which of two (or more) compiled schedules is faster.

Separate benchmark rows run minutes apart in separate processes, and a shared machine drifts between them
(on this project's 2-core VM by up to 13%). When the difference to measure is small — e.g. what the
block-caching scale/shift costs inside a replay graph — this loads every engine directory into ONE process
and times whole sampling runs in ABBA order (A B B A, then again), so slow drift hits every candidate alike.
Reports per-candidate median / min / max run latency and the median time of each step variant (Dispatcher
timing), and writes ``results.json`` and ``results.md`` to ``--out``.

Example (the engine directories a run_benchmarks call left in its cache):
    python -m ditcache.benchmarks.ab_latency --rounds 3 --classes 207 --guidance 4 \\
        --weights ~/.cache/ditcache/bench/weights/dit-xl-random-seed0.safetensors \\
        --engines ~/.cache/ditcache/bench/engines/cpu-dit-xl-scale-shift/inductor__bf16__bc-aggressive-20 \\
                  ~/.cache/ditcache/bench/engines/cpu-dit-xl-scale-shift/inductor__bf16__bc-aggressive-20-ss \\
        --labels uncorrected scale-shift --out benchmarks/results/ab_scale_shift_dit_xl
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ditcache.benchmarks.bench_report import machine_info
from ditcache.compiler.atomic import write_atomic

from ditcache.benchmarks.paths import repo_relative


def abba_order(count: int, rounds: int) -> list[int]:
    """Candidate indices in ABBA-style order: each round runs all forwards, then all backwards."""
    forward = list(range(count))
    return [i for _ in range(rounds) for i in forward + forward[::-1]]


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of seconds."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": len(seconds)}


def markdown(document: dict[str, Any]) -> str:
    """The results table."""
    base = document["candidates"][0]
    lines = [f"# Interleaved A/B latency ({document['date']})", "",
             f"- **command**: `{document['command']}`",
             f"- **machine**: {document['machine']['cpu']}, load average at start / end "
             f"{document['load_start']} / {document['load_end']}",
             f"- **request**: {document['request']}",
             f"- **order**: {document['order_note']}", "",
             "| candidate | engines | runs | median s | min–max s | vs first | median step ms per variant |",
             "|---|---|---|---|---|---|---|"]
    for c in document["candidates"]:
        steps = "; ".join(f"{name}: {ms:.0f}" for name, ms in c["step_ms"].items())
        lines.append(f"| {c['label']} | `{c['engines']}` | {c['runs']} | {c['median_s']:.3f} | "
                     f"{c['min_s']:.3f}–{c['max_s']:.3f} | {c['median_s'] / base['median_s']:.3f} | {steps} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__[__doc__.index("Example"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", required=True, help="engine directories (export-engines output)")
    parser.add_argument("--labels", nargs="+", help="one name per engine directory (default: folder names)")
    parser.add_argument("--weights", help="weights the inductor/eager engines compile from (checked by sha256)")
    parser.add_argument("--classes", nargs="+", type=int, default=[0], help="class label per image")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds: each candidate runs 2 x rounds times")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", required=True, help="results folder")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.engines):
        parser.error(f"--labels: {len(args.labels)} names for {len(args.engines)} engine directories")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    import torch

    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.load import load_engines

    if args.threads:
        torch.set_num_threads(args.threads)
    labels = args.labels or [Path(e).name for e in args.engines]
    loaded = [load_engines(e, weights=args.weights, images=len(args.classes), guidance=args.guidance > 1)
              for e in args.engines]
    steps = {c.plan.num_steps for c in loaded}
    if len(steps) != 1:
        raise SystemExit(f"ab_latency: the engine directories have different step counts {sorted(steps)}; "
                         "compare schedules of the same length")
    request = SampleRequest(tuple(args.classes), steps.pop(), args.guidance, args.seed, args.scheduler)

    def run(candidate) -> tuple[float, dict[str, list[float]]]:
        candidate.dispatcher.timing = True
        start = time.perf_counter()
        sample_with_plan(candidate.dispatcher, candidate.spec, request)
        return time.perf_counter() - start, {k: list(v) for k, v in candidate.dispatcher.step_seconds.items()}

    load_start = [round(x, 2) for x in os.getloadavg()]
    for i, candidate in enumerate(loaded):
        print(f"warm-up {labels[i]} ...", flush=True)
        run(candidate)
    seconds: list[list[float]] = [[] for _ in loaded]
    step_seconds: list[dict[str, list[float]]] = [{} for _ in loaded]
    for i in abba_order(len(loaded), args.rounds):
        wall, per_variant = run(loaded[i])
        seconds[i].append(wall)
        for name, values in per_variant.items():
            step_seconds[i].setdefault(name, []).extend(values)
        print(f"{labels[i]}: {wall:.3f} s", flush=True)

    document = {
        "command": "python -m ditcache.benchmarks.ab_latency " + shlex.join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info("cpu"),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "request": f"{len(args.classes)} image(s), classes {args.classes}, guidance {args.guidance}, "
                   f"{request.steps} {args.scheduler} steps, seed {args.seed}, threads {torch.get_num_threads()}",
        "order_note": f"one warm-up run each, then {args.rounds} ABBA round(s): "
                      + " ".join(labels[i] for i in abba_order(len(loaded), 1)),
        "candidates": [{"label": labels[i], "engines": str(args.engines[i]), **summarize(seconds[i]),
                        "seconds": seconds[i],
                        "step_ms": {k: 1e3 * statistics.median(v) for k, v in sorted(step_seconds[i].items())}}
                       for i in range(len(loaded))],
    }
    out = Path(args.out)
    write_atomic(out / "results.json", repo_relative(json.dumps(document, indent=2) + "\n"), mkdir=True)
    write_atomic(out / "results.md", repo_relative(markdown(document)), mkdir=True)
    print(markdown(document))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
