#!/usr/bin/env python
"""Throughput of ``ditcache generate`` on 1 and K processes (torchrun, gloo), saved as a table.

Runs, each into a fresh output folder and in its own process tree:

* ``1 rank x T threads`` (``ditcache generate``, torch's default thread count: all cores);
* ``1 rank x 1 thread`` (OMP_NUM_THREADS=1): the per-rank reference for scaling efficiency;
* ``K ranks x 1 thread`` (``torchrun --standalone --nproc-per-node K -m ditcache generate``; torchrun sets one
  thread per rank).

and checks that every run wrote the same sample file (bit-identical, whatever the sharding). Writes
``results.md`` and ``results.json`` (each run's ``summary.json`` included) to ``--out``.

Example (the saved result; ~5 minutes on 2 cores):
    python benchmarks/generate_scaling.py --num-samples 400 --schedule schedules/fmnist-delta-20.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ditcache.compiler.atomic import write_atomic
from ditcache.compiler.runtime.seeds import SEED_RULE

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "generate_scaling_cpu"


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_one(label: str, command: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """Run one configuration; returns its summary.json plus the wall time and the sample file's digest."""
    print(f"[{label}] {shlex.join(command)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    digest = hashlib.sha256(Path(summary["output"]).read_bytes()).hexdigest()
    print(f"[{label}] {summary['throughput']:.2f} img/s over {summary['seconds']:.1f} s (process wall {wall:.1f} s)",
          flush=True)
    return {"label": label, "command": shlex.join(command), "process_wall_s": wall, "sha256": digest,
            "summary": summary}


def table(runs: list[dict[str, Any]], reference: float) -> str:
    """The markdown table of the runs."""
    lines = ["| run | ranks x threads | images | sampling s (slowest rank) | images/s | per-rank images/s | "
             "vs 1 rank x 1 thread | scaling efficiency |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["summary"]
        threads = s["ranks"][0]["threads"]
        per_rank = ", ".join(f"{k['throughput']:.2f}" for k in s["ranks"])
        speedup = s["throughput"] / reference
        lines.append(f"| {r['label']} | {s['world_size']} x {threads} | {s['images_computed']} | {s['seconds']:.1f} | "
                     f"{s['throughput']:.2f} | {per_rank} | {speedup:.2f}x | "
                     f"{100 * speedup / (s['world_size'] * threads):.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=400)
    p.add_argument("--nproc", type=int, default=os.cpu_count() or 2, help="K: ranks of the torchrun run")
    p.add_argument("--model", default="dit-fmnist")
    p.add_argument("--schedule", default="schedules/fmnist-delta-20.yaml")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--chunk-size", type=int, default=25)
    p.add_argument("--random-weights", action="store_true", help="timing only (tests)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    results = Path(args.out)
    results.mkdir(parents=True, exist_ok=True)  # a bad --out fails now, not after the runs

    generate = ["--model", args.model, "--schedule", args.schedule, "--guidance", str(args.guidance),
                "--num-samples", str(args.num_samples), "--chunk-size", str(args.chunk_size), "--quiet"]
    generate += ["--random-weights"] if args.random_weights else []
    work = Path(tempfile.mkdtemp(prefix="ditcache-scaling-"))
    base_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    configs = [
        ("1 rank, all cores", [sys.executable, "-m", "ditcache", "generate"], base_env),
        ("1 rank, 1 thread", [sys.executable, "-m", "ditcache", "generate"], {**base_env, "OMP_NUM_THREADS": "1"}),
        (f"{args.nproc} ranks (torchrun)", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc-per-node", str(args.nproc), "-m", "ditcache", "generate"],
         base_env),
    ]
    runs = []
    try:
        for i, (label, launcher, env) in enumerate(configs):
            out = work / f"run{i}"
            runs.append(run_one(label, launcher + generate + ["--out", str(out)], env, out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digests = {r["sha256"] for r in runs}
    if len(digests) != 1:
        raise RuntimeError(f"the runs wrote different samples: {[(r['label'], r['sha256'][:12]) for r in runs]}")
    reference = runs[1]["summary"]["throughput"]
    loadavg = os.getloadavg()
    header = [
        f"# `ditcache generate` throughput: 1 vs {args.nproc} processes",
        "",
        f"- **command**: `python benchmarks/generate_scaling.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"- **date**: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- **machine**: {cpu_name()}, {os.cpu_count()} cores; load average after the runs {loadavg[0]:.2f}",
        f"- **work**: {args.model}, {args.schedule}, guidance {args.guidance}, {args.num_samples} samples in chunks "
        f"of {args.chunk_size}, eager dispatcher, CPU, gloo",
        f"- **same images**: all runs wrote the same sample file (sha256 {runs[0]['sha256'][:16]}…; sample i's "
        f"noise seed: `{SEED_RULE}`)",
        "- images/s = images / the slowest rank's sampling time (weight loading and the merge excluded; "
        "`process_wall_s` in results.json includes them)",
        "",
        table(runs, reference),
        "",
    ]
    for name, text in (("results.md", "\n".join(header)),
                       ("results.json", json.dumps({"runs": runs, "reference_images_per_s": reference}, indent=2))):
        write_atomic(results / name, text)
    print("\n".join(header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
