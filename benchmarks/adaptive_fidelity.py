#!/usr/bin/env python
"""Per-image fidelity of adaptive schedules against the static block cache at the same target speedup, on the shipped
dit-fmnist (eager, CPU; MACs counted, not timed).

Setting (fixed, written into the results): 20 DDIM steps, guidance 4, one image per run (its two CFG rows form the
batch, so every decision is that image's own). Calibration: classes 0..9 x seeds 0, 1 (the same runs for every
method): ``calibrate`` change curves for the block cache (its threshold solved from the curves for the target, the
paper's rule), ``calibrate --adaptive`` curves and rescale polynomial for the adaptive signals (their threshold solved
for the target speedup on the calibration runs, as ``auto-schedule --kind adaptive`` does). Evaluation: N images
(class i % 10, noise seed ``sample_seed(7, i)``), each compared with the full run on the same noise: PSNR of the
images in [0, 1] (mean over images, and the 10th percentile), and the MACs speedup the run really spent.

Writes ``adaptive_fidelity.json`` and ``adaptive_fidelity.md`` to ``--out``.

Example::

    python -m ditcache.benchmarks.adaptive_fidelity --out benchmarks/results/adaptive_fmnist_cpu --images 40
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ditcache.compiler.atomic import write_atomic, write_json_atomic
from ditcache.compiler.calibration.adaptive import measure_adaptive, threshold_for_speedup
from ditcache.compiler.calibration.curves import calibrate
from ditcache.compiler.runtime.decider import eager_adaptive_dispatcher
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.compiler.runtime.seeds import sample_seed
from ditcache.graphs import costs_for, get_spec, parts_for
from ditcache.graphs.adaptive import AdaptivePlan, AdaptivePolicy
from ditcache.graphs.auto_schedule import plan_for_threshold, threshold_for_target
from ditcache.graphs.weights import load_model

GUIDANCE, SAMPLER = 4.0, "ddim"


def images(latents: torch.Tensor) -> np.ndarray:
    return (latents / 2 + 0.5).clamp(0, 1).numpy().astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def evaluation_requests(n: int, steps: int) -> list[SampleRequest]:
    return [SampleRequest((i % 10,), steps, GUIDANCE, 0, SAMPLER, sample_seeds=(sample_seed(7, i),)) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0])
    parser.add_argument("--max-consecutive", type=int, default=3)
    parser.add_argument("--model", default="dit-fmnist", help="registry model (default: the shipped dit-fmnist)")
    parser.add_argument("--random-weights", action="store_true", help="random weights (the smoke test)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    steps = args.steps
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = get_spec(args.model)
    model, info = load_model(spec, random_weights=args.random_weights)
    model = model.eval()
    costs = costs_for(spec)
    calibration = [SampleRequest(tuple(range(10)), steps, GUIDANCE, s, SAMPLER) for s in (0, 1)]
    evaluation = evaluation_requests(args.images, steps)
    parts = parts_for(model, spec)

    full = model_denoiser(model)  # the unmodified diffusers model
    reference = np.concatenate([images(sample(full, spec, r)) for r in evaluation])

    curves = calibrate(model, spec, calibration, info.sha256)
    signals = {s: measure_adaptive(model, spec, calibration, s, weights_sha256=info.sha256)
               for s in ("first-block", "modulated-input")}
    rows = []
    for target in args.targets:
        threshold = threshold_for_target(curves.mean, target, costs)
        plan = plan_for_threshold(curves.mean, threshold)
        dispatcher = eager_dispatcher(model, spec, plan)
        got = np.concatenate([images(sample_with_plan(dispatcher, spec, r)) for r in evaluation])
        values = psnr(got, reference)
        rows.append({"method": "block-cache (static, change curves)", "target": target, "threshold": threshold,
                     "speedup": plan.theoretical_speedup(costs), "speedup_min": plan.theoretical_speedup(costs),
                     "speedup_max": plan.theoretical_speedup(costs), "psnr_mean_db": float(values.mean()),
                     "psnr_p10_db": float(np.percentile(values, 10))})
        for signal, measured in signals.items():
            for rescale in (tuple(measured.rescale), ()):
                policy = AdaptivePolicy(steps, 0.0, signal, max_consecutive=args.max_consecutive, rescale=rescale)
                try:
                    threshold, _ = threshold_for_speedup(model, spec, policy, calibration, target)
                except ValueError as exc:
                    rows.append({"method": f"adaptive {signal}" + (" rescaled" if rescale else ""),
                                 "target": target, "error": str(exc)})
                    continue
                plan = AdaptivePlan.build(AdaptivePolicy(**{**policy.__dict__, "threshold": threshold}),
                                          spec.num_blocks)
                dispatcher = eager_adaptive_dispatcher(parts, plan)
                outs, speedups = [], []
                for r in evaluation:
                    outs.append(images(sample_with_plan(dispatcher, spec, r)))
                    speedups.append(costs.full * steps / plan.macs_of(dispatcher.decider.replayed, costs))
                values = psnr(np.concatenate(outs), reference)
                spent = sum(plan.macs_of(0, costs) / s for s in speedups)
                rows.append({"method": f"adaptive {signal}" + (" rescaled" if rescale else ""), "target": target,
                             "threshold": threshold, "speedup": costs.full * steps * len(speedups) / spent,
                             "speedup_min": min(speedups), "speedup_max": max(speedups),
                             "psnr_mean_db": float(values.mean()), "psnr_p10_db": float(np.percentile(values, 10))})
    result = {"model": spec.name, "weights_sha256": info.sha256, "random_weights": info.random, "steps": steps,
              "guidance": GUIDANCE,
              "sampler": SAMPLER, "images": args.images, "calibration": "classes 0..9 x seeds 0, 1",
              "max_consecutive": args.max_consecutive, "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "seconds": time.perf_counter() - start, "rows": rows,
              "command": "python -m ditcache.benchmarks.adaptive_fidelity "
                         + shlex.join(sys.argv[1:] if argv is None else argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "adaptive_fidelity.json", result)
    lines = [f"# Adaptive vs static block cache on {spec.name} ({args.images} images, {steps} {SAMPLER} steps, "
             f"guidance {GUIDANCE}; eager CPU, MACs counted)", "", f"Command: `{result['command']}`", "",
             "| target | method | threshold | speedup (mean, min-max) | PSNR mean dB | PSNR p10 dB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['target']} | {r['method']} | - | {r['error']} | - | - |")
            continue
        lines.append(f"| {r['target']} | {r['method']} | {r['threshold']:.4g} | {r['speedup']:.2f}x "
                     f"({r['speedup_min']:.2f}-{r['speedup_max']:.2f}) | {r['psnr_mean_db']:.2f} | "
                     f"{r['psnr_p10_db']:.2f} |")
    write_atomic(out / "adaptive_fidelity.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
