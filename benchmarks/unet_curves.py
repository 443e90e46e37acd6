#!/usr/bin/env python
"""A U-Net's change curves by layer type: attention layers (block caching's units) beside the resnets.

The block-caching paper (Wimbauer et al., CVPR 2024, Fig. 2-3) observes on LDM/Emu that a layer's relative L1
change ‖F(s) − F(s−1)‖₁ / ‖F(s)‖₁ is smooth over the steps, large in the first (noisiest) steps and small later,
and caches the spatial transformers. This script measures the same quantity with ``ditcache``'s own
``calibrate`` (one code path: the same hooks, the same Welford statistics; ``modules=`` adds the resnets) on every
attention layer and every resnet of a U-Net in one sampling pass, and writes:

* ``curves_by_type.json``: the curves of all hooked modules (a ``ChangeCurves`` file) with their labels and types;
* ``curves_by_type.png``: left, every module's curve (attention solid, resnets dashed); middle, the mean curve per
  type; right, the share of each type's total change that falls in the steps so far (cumulative);
* ``summary.json`` / ``summary.md``: per type, the mean change over the first / middle / last third of the steps,
  the step of the largest change, and the share of the change in the first quarter of the steps.

The schedules themselves come from ``ditcache calibrate`` (attention layers only), see
schedules/unet-fmnist-calibrated/make.sh.

Example:
    nice -n 19 python benchmarks/unet_curves.py --model unet-fmnist --steps 20 --guidance 1.5 \\
        --seeds 100 101 102 103 104 --out benchmarks/results/unet_fmnist_curves
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ditcache.compiler.atomic import atomic_path

REPO_ROOT = Path(__file__).resolve().parent.parent


def thirds(row: list[float]) -> tuple[float, float, float]:
    """Mean of steps 1.. (step 0 has no previous step) over the first, middle and last third."""
    values = row[1:]
    n = len(values)
    cut = [0, n // 3, 2 * n // 3, n]
    return tuple(sum(values[a:b]) / max(b - a, 1) for a, b in zip(cut, cut[1:]))


def summarize(mean: list[list[float]], kinds: list[str], steps: int) -> dict[str, dict[str, float]]:
    import numpy as np

    out = {}
    for kind in ("attention", "resnet"):
        rows = np.array([m for m, k in zip(mean, kinds) if k == kind])
        if not len(rows):
            continue
        avg = rows.mean(0)
        first, middle, last = thirds(avg.tolist())
        quarter = max(1, (steps - 1) // 4)
        out[kind] = {
            "modules": int(len(rows)),
            "mean_change_first_third": float(first), "mean_change_middle_third": float(middle),
            "mean_change_last_third": float(last),
            "step_of_largest_change": int(avg[1:].argmax() + 1),
            "share_of_change_in_first_quarter": float(avg[1:quarter + 1].sum() / avg[1:].sum()),
            "median_change": float(np.median(rows[:, 1:])),
        }
    return out


def plot(mean: list[list[float]], labels: list[str], kinds: list[str], steps: int, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean_arr = np.array(mean)
    x = np.arange(1, steps)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = {"attention": plt.cm.viridis, "resnet": plt.cm.autumn}
    for kind, style in (("resnet", "--"), ("attention", "-")):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        for j, i in enumerate(idx):
            axes[0].plot(x, mean_arr[i, 1:], style, color=colors[kind](j / max(len(idx) - 1, 1)), lw=1.2,
                         label=f"{kind}: {labels[i]}")
        if idx:
            avg = mean_arr[idx, 1:].mean(0)
            axes[1].plot(x, avg, style, lw=2, label=f"{kind} (mean of {len(idx)})")
            axes[2].plot(x, np.cumsum(avg) / avg.sum(), style, lw=2, label=kind)
    axes[0].set_yscale("log")
    axes[0].set_title("every module (attention solid, resnets dashed)", fontsize=9)
    axes[0].legend(fontsize=5, ncol=2)
    axes[1].set_yscale("log")
    axes[1].set_title("mean per type", fontsize=9)
    axes[1].legend(fontsize=8)
    axes[2].set_title("cumulative share of the type's change", fontsize=9)
    axes[2].axhline(0.5, color="gray", lw=0.8, ls=":")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step (0 = noisiest)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("relative L1 change of the output vs the previous step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("Example:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="unet-fmnist", help="a U-Net of the registry (default: %(default)s)")
    parser.add_argument("--weights", help="weights (default: the shipped ones)")
    parser.add_argument("--random-weights", action="store_true", help="random weights (tests only)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102, 103, 104])
    parser.add_argument("--classes", type=int, nargs="+", help="default: all (up to 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "unet_fmnist_curves"))
    args = parser.parse_args(argv)

    import torch

    from ditcache.compiler.calibration.curves import calibrate, save_curves
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.graphs import get_spec, load_model, parts_for

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_spec(args.model)
    if not hasattr(spec.family_record.parts, "resnet_modules"):  # the curves compare attention layers with resnets
        parser.error(f"{spec.name} is not a U-Net (its {spec.family} decomposition has no resnets to compare)")
    model, info = load_model(spec, args.weights, random_weights=args.random_weights)
    parts = parts_for(model, spec)
    attention, resnets = parts.block_modules(), parts.resnet_modules()
    labels = [f"A{i} {label}" for i, label in enumerate(parts.block_labels())] + [f"R{i}" for i in range(len(resnets))]
    kinds = ["attention"] * len(attention) + ["resnet"] * len(resnets)
    classes = tuple(args.classes if args.classes else range(min(10, spec.num_classes)))
    requests = [SampleRequest(classes, args.steps, args.guidance, seed, args.scheduler) for seed in args.seeds]
    curves = calibrate(model, spec, requests, info.sha256, modules=[*attention, *resnets])
    curves.meta.update(labels=labels, kinds=kinds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_curves(curves, out / "curves_by_type.json")
    summary = summarize(curves.mean, kinds, args.steps)
    title = (f"{spec.name} ({info.source.split('/')[-2] if '/' in info.source else info.source}), "
             f"{args.steps} {args.scheduler} steps, guidance {args.guidance}, {curves.count} samples")
    plot(curves.mean, labels, kinds, args.steps, title, out / "curves_by_type.png")
    command = "python benchmarks/unet_curves.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    record = {"command": command, "model": spec.name, "weights": info.source, "weights_sha256": info.sha256,
              "steps": args.steps, "scheduler": args.scheduler, "guidance": args.guidance, "seeds": args.seeds,
              "classes": list(classes), "samples": curves.count, "summary": summary}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Change curves of {spec.name} by layer type", "", f"`{command}`", "",
             "| type | modules | mean change, first third | middle third | last third | largest at step | "
             "share in first quarter |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for kind, s in summary.items():
        lines.append(f"| {kind} | {s['modules']} | {s['mean_change_first_third']:.4f} | "
                     f"{s['mean_change_middle_third']:.4f} | {s['mean_change_last_third']:.4f} | "
                     f"{s['step_of_largest_change']} | {s['share_of_change_in_first_quarter']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
