#!/usr/bin/env python
"""Error-driven block-cache schedules vs the change-curve rule at equal MAC budgets, on the shipped dit-fmnist.

Both kinds of schedule are made from the same calibration images (``--calibration-images``, seeds of the per-sample
rule under global seed ``--calibration-seed``), disjoint from the evaluation images (``--n`` images under global
seed 0, the rule of benchmarks/eval_quality.py; class i % 10):

* ``error``: ``compiler.calibration.search.error_driven_schedule`` (what ``auto-schedule --objective error`` runs):
  one greedy search up to the largest budget; the schedule of a smaller budget is the shortest prefix of its path
  that meets it, which is exactly what a search at that budget returns;
* ``curves``: the block-caching paper's rule (``auto-schedule --objective change-curves``): change curves measured
  on the same calibration images, δ solved for the budget;
* ``curves-shipped``: the same rule on the shipped schedules/fmnist-calibrated/curves.json (measured on more images)
  so that the comparison does not hinge on curves from a few images.

Every plan is made by graphs.planning.plan_for and sampled through the eager dispatcher. Reported per schedule: the
theoretical speedup (MACs), the search's objective and the measured final-sample error on the calibration images,
and on the evaluation images PSNR (pooled MSE of images in [0, 1]) and cosine vs the full run on the same noise.
Quality numbers only: a shared machine slows the run but does not change them.

Example (the saved results):
    nice -n 5 python benchmarks/error_driven.py
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ditcache.compiler.atomic import write_atomic, write_json_atomic
from ditcache.compiler.calibration.curves import calibrate
from ditcache.compiler.calibration.search import compare_final, error_driven_schedule
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.runner import sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.runtime.seeds import sample_seeds
from ditcache.graphs import costs_for, parts_for
from ditcache.graphs.auto_schedule import MacBudget, SearchSpace, prefix_meeting, threshold_for_target
from ditcache.graphs.configs import BlockCacheConfig
from ditcache.graphs.curves import ChangeCurves
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import get_spec
from ditcache.graphs.schedule import full_schedule
from ditcache.graphs.schedule_rules import threshold_recompute
from ditcache.graphs.weights import load_model

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CURVES = REPO_ROOT / "schedules" / "fmnist-calibrated" / "curves.json"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "error_driven_fmnist"


def moves_of(space: SearchSpace, recompute: dict[int, list[int]]) -> frozenset:
    """The search's moves of a single-block recompute table."""
    return frozenset((s, b) for b, computed in recompute.items() for s in range(1, space.steps)
                     if s not in set(computed))


def images_of(latents: torch.Tensor, spec) -> torch.Tensor:
    from ditcache.images import decode

    return decode(latents, spec).float()


def fidelity(images: torch.Tensor, latents: torch.Tensor, full_images: torch.Tensor,
             full_latents: torch.Tensor) -> dict[str, float]:
    mse = (images - full_images).pow(2).mean().item()
    per_image = (images - full_images).pow(2).flatten(1).mean(1)
    a, b = latents.flatten(1).double(), full_latents.flatten(1).double()
    cosine = ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)).mean().item()
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(1 / mse),
            "psnr_mean_db": (10 * torch.log10(1 / per_image.clamp(min=1e-20))).mean().item(),
            "cosine": cosine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.5, 2.0, 2.2], help="target speedups (MACs)")
    parser.add_argument("--calibration-images", type=int, default=8)
    parser.add_argument("--calibration-seed", type=int, default=1, help="global seed of the calibration images")
    parser.add_argument("--n", type=int, default=64, help="evaluation images (global seed 0)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5, help="as schedules/fmnist-calibrated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()
    spec = get_spec("dit-fmnist")
    model, info = load_model(spec, None, False)
    model.eval()
    parts, costs = parts_for(model, spec), costs_for(spec)
    calibration_seeds = sample_seeds(args.calibration_seed, range(args.calibration_images))
    calibration = SampleRequest(tuple(i % 10 for i in range(args.calibration_images)), args.steps, args.guidance, 0,
                                "ddim", sample_seeds=calibration_seeds)
    evaluation = SampleRequest(tuple(i % 10 for i in range(args.n)), args.steps, args.guidance, 0, "ddim",
                               sample_seeds=sample_seeds(0, range(args.n)))
    budgets = [MacBudget.of(b) for b in sorted(args.budgets)]

    print(f"search to {budgets[-1].label} on {args.calibration_images} calibration images ...", flush=True)
    t0 = time.perf_counter()
    found = error_driven_schedule(parts, spec, calibration, budgets[-1], progress=False)
    search_s = time.perf_counter() - t0
    space = found.space
    print(f"  {len(found.result.moves)} moves, {found.result.evaluations} objective calls, {search_s:.0f} s",
          flush=True)
    objective = found.objective  # the search's own objective (memoised), to score every schedule
    curves_own = calibrate(model, spec, [calibration], info.sha256)
    curves_shipped = ChangeCurves.load(SHIPPED_CURVES)

    schedules: dict[str, tuple[str, float, dict[int, list[int]], str]] = {}  # name -> (kind, budget, table, params)
    for budget in budgets:
        moves = prefix_meeting(space, costs, found.result.order, budget)
        schedules[f"error-{budget.label}"] = ("error (greedy)", budget.target_speedup, space.recompute(moves),
                                              f"{len(moves)} block replays")
        rules = [("curves", curves_own)] + ([("curves-shipped", curves_shipped)]
                                             if curves_shipped.steps == args.steps else [])  # its steps only
        for kind, curves in rules:
            delta = threshold_for_target(curves.mean, budget.target_speedup, costs)
            table = {i: threshold_recompute(row, delta) for i, row in enumerate(curves.mean)}
            schedules[f"{kind}-{budget.label}"] = (kind, budget.target_speedup, table, f"δ={delta:.4g}")

    def run(plan) -> torch.Tensor:
        return sample_with_plan(build_dispatcher(plan, parts=parts), spec, evaluation)

    full_plan = plan_for(full_schedule(args.steps), spec)
    full_latents = run(full_plan)
    full_images = images_of(full_latents, spec)
    rows = []
    for name, (kind, target, table, params) in schedules.items():
        plan = plan_for(BlockCacheConfig(steps=args.steps, recompute=table).to_schedule(), spec)
        moves = moves_of(space, table)
        calib_final = compare_final(sample_with_plan(build_dispatcher(plan, parts=parts), spec, calibration),
                                    objective.reference.final)
        latents = run(plan)
        row = {"schedule": name, "rule": kind, "budget": target, "params": params,
               "theoretical_speedup": plan.theoretical_speedup(costs), "variants": len(plan.variants),
               "calibration_objective": objective(moves), "calibration_final_psnr_db": calib_final.psnr_db,
               "calibration_final_relative_l2": calib_final.relative_l2,
               **{f"eval_{k}": v for k, v in fidelity(images_of(latents, spec), latents, full_images,
                                                      full_latents).items()}}
        rows.append(row)
        print(f"  {name:<22} {row['theoretical_speedup']:.3f}x  calib obj {row['calibration_objective']:.3g}  "
              f"calib PSNR {calib_final.psnr_db:.2f}  eval PSNR {row['eval_psnr_db']:.2f} dB  "
              f"cos {row['eval_cosine']:.5f}", flush=True)

    command = "python benchmarks/error_driven.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                     " " + shlex.join(sys.argv[1:] if argv is None else argv))
    record = {
        "command": command,
        "model": spec.name, "weights_sha256": info.sha256, "steps": args.steps, "sampler": "ddim",
        "guidance": args.guidance,
        "calibration": {"images": args.calibration_images, "global_seed": args.calibration_seed,
                        "seeds": list(calibration.sample_seeds)},
        "evaluation": {"images": args.n, "global_seed": 0, "classes": "i % 10"},
        "search": {"seconds": search_s, "objective_calls": found.result.evaluations,
                   "gains": objective.gains},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "loadavg_at_start": load_start,
                    "note": "shared 2-core machine (other jobs ran); the numbers are quality, not timings"},
        "total_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", record)
    write_atomic(args.out / "results.md", markdown(record))
    print(f"wrote {args.out / 'results.md'} ({record['total_seconds']:.0f} s)")
    return 0


def markdown(record: dict) -> str:
    lines = [
        "# Error-driven schedules vs the change-curve rule (dit-fmnist, equal MAC budgets)", "",
        "Command (from the repository root):", "", "```", record["command"], "```", "",
        f"- model `{record['model']}` (shipped weights, sha256 `{record['weights_sha256'][:16]}`), "
        f"{record['steps']} DDIM steps, guidance {record['guidance']}",
        f"- calibration: {record['calibration']['images']} images (class i % 10, per-sample seeds under global seed "
        f"{record['calibration']['global_seed']}); evaluation: {record['evaluation']['images']} other images "
        f"(global seed 0, class i % 10)",
        f"- search: {record['search']['seconds']:.0f} s, {record['search']['objective_calls']} objective calls "
        f"(one greedy path to the largest budget; smaller budgets are its prefixes)",
        f"- machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, torch "
        f"{record['machine']['torch']} ({record['machine']['torch_threads']} threads), load average at start "
        f"{tuple(round(x, 2) for x in record['machine']['loadavg_at_start'])}; {record['machine']['note']}; "
        f"total {record['total_seconds']:.0f} s", "",
        "| schedule | rule | params | speedup (MACs) | variants | calib objective | calib PSNR (dB) | eval PSNR (dB) "
        "| eval mean PSNR (dB) | eval cosine |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['schedule']} | {r['rule']} | {r['params']} | {r['theoretical_speedup']:.3f}x | "
                     f"{r['variants']} | {r['calibration_objective']:.3g} | {r['calibration_final_psnr_db']:.2f} | "
                     f"{r['eval_psnr_db']:.2f} | {r['eval_psnr_mean_db']:.2f} | {r['eval_cosine']:.5f} |")
    lines += [
        "", "calib objective: the search's estimate of the final-latent MSE on the calibration images (lower is "
        "better); calib PSNR: the measured final latents vs the full run's on those images (range of the full "
        "latents as peak). eval PSNR: pooled MSE of the decoded images in [0, 1] vs the full run on the same noise; "
        "mean PSNR: per image, averaged; cosine: per sample, of the final latents. curves: change curves measured on "
        "the calibration images; curves-shipped: schedules/fmnist-calibrated/curves.json.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
