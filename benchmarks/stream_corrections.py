#!/usr/bin/env python
"""Per-stream vs shared closed-form scale/shift on a [text; image] family (default sd3-tiny, random weights).

For each random-weights seed and guidance scale, the steps of ``tests/compiler/test_flow_calibration.py``'s CLI
test, run through the library: change curves of 2 prompts x seeds 0, 1 (``ditcache calibrate --steps 8``), a
block-cache schedule for a 1.4x MAC target (``auto-schedule --target-speedup 1.4``), then three runs of that
schedule against the full one:

* ``uncorrected``: the cached plan as is;
* ``shared``: one (D,) closed-form fit per range and step over the text and image tokens (what ``fit-correction``
  wrote before corrections were per stream; ``fit_corrections(..., shared_streams=True)``);
* ``per-stream``: a (2, D) fit, the text row on the text tokens, the image row on the image tokens (what
  ``fit-correction`` writes now).

Both fits use the 2 prompts x seed 0 (``fit-correction --seeds 0``). Reported on those fitted images and on held-out
noise (seeds ``--eval-seeds``, the same prompts): PSNR of the final latents vs the full run's (data range: the full
latents' max - min over the set) and their mean absolute error (the number docs/families.md quoted). Random prompt
embeddings as the tests draw them (``prompts_for``: 2 prompts, seed 1). Quality only, no timing.

Example (the saved results):
    nice -n 5 python benchmarks/stream_corrections.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import shlex
import sys
from pathlib import Path

import torch

from ditcache.benchmarks.paths import repo_relative
from ditcache.compiler.atomic import write_atomic
from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections
from ditcache.compiler.calibration.curves import calibrate
from ditcache.compiler.runtime.prompts import PromptEmbeddings
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.graphs import costs_for, full_schedule, parse_schedule
from ditcache.graphs.auto_schedule import threshold_for_target
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import get_spec
from ditcache.graphs.schedule_rules import threshold_recompute
from ditcache.graphs.weights import load_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "stream_corrections_sd3_tiny"
KINDS = ("uncorrected", "shared", "per-stream")


def random_prompts(spec, images: int = 2, seed: int = 1) -> PromptEmbeddings:
    """Random prompt embeddings of the model's text shape, drawn as tests/compiler/test_flow_sampling.prompts_for."""
    gen = torch.Generator().manual_seed(seed)
    length, channels = spec.text_length, int(spec.config["joint_attention_dim"])
    pooled = int(spec.config["pooled_projection_dim"])
    return PromptEmbeddings(
        torch.randn(images, length, channels, generator=gen), torch.ones(images, length, dtype=torch.long),
        torch.randn(1, length, channels, generator=gen), torch.ones(1, length, dtype=torch.long),
        torch.randn(images, pooled, generator=gen), torch.randn(1, pooled, generator=gen))


def metrics(got: torch.Tensor, full: torch.Tensor) -> dict[str, float]:
    """PSNR (dB, data range of the full latents) and mean absolute error of ``got`` against ``full``."""
    mse = (got.double() - full.double()).pow(2).mean().item()
    span = (full.max() - full.min()).item()
    return {"psnr_db": math.inf if mse == 0 else 10 * math.log10(span ** 2 / mse),
            "mean_abs": (got - full).abs().mean().item()}


def one_case(spec, weights_seed: int, guidance: float, steps: int, target: float, eval_seeds: list[int]) -> dict:
    """Curves -> schedule -> shared and per-stream fits -> errors on the fitted and held-out images."""
    model, info = load_model(spec, random_weights=True, seed=weights_seed)
    prompts = random_prompts(spec)
    requests = [SampleRequest((), steps, guidance, s, spec.sampler, prompts=prompts) for s in (0, 1)]
    curves = calibrate(model, spec, requests, info.sha256)
    threshold = threshold_for_target(curves.mean, target, costs_for(spec))
    recompute = {i: threshold_recompute(row, threshold) for i, row in enumerate(curves.mean)}
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": steps, "recompute": recompute}), spec)
    fit_on = calibration_request((), [0], steps, guidance, spec.sampler, prompts)
    tables = {"shared": fit_corrections(model, spec, plan, fit_on, shared_streams=True),
              "per-stream": fit_corrections(model, spec, plan, fit_on)}
    corrected = dataclasses.replace(plan, corrected=True)
    sets = {"fitted": fit_on, "held-out": calibration_request((), eval_seeds, steps, guidance, spec.sampler, prompts)}
    results = {}
    for name, request in sets.items():
        full = sample_with_plan(eager_dispatcher(model, spec, plan_for(full_schedule(steps), spec)), spec, request)
        runs = {"uncorrected": sample_with_plan(eager_dispatcher(model, spec, plan), spec, request)}
        for kind, tensors in tables.items():
            runs[kind] = sample_with_plan(eager_dispatcher(model, spec, corrected, tensors), spec, request)
        results[name] = {"images": request.num_images, **{k: metrics(runs[k], full) for k in KINDS}}
    return {"weights_seed": weights_seed, "guidance": guidance, "recompute": {str(k): v for k, v in recompute.items()},
            "theoretical_speedup": plan.theoretical_speedup(costs_for(spec)), "results": results}


def table(cases: list[dict]) -> str:
    """Markdown: one row per (weights seed, guidance, image set)."""
    lines = ["| weights seed | guidance | images | " + " | ".join(f"{k} PSNR dB (mean abs)" for k in KINDS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " |"]
    for case in cases:
        for name, row in case["results"].items():
            cells = [f"{row[k]['psnr_db']:.2f} ({row[k]['mean_abs']:.4f})" for k in KINDS]
            lines.append(f"| {case['weights_seed']} | {case['guidance']:g} | {name} ({row['images']}) | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python benchmarks/stream_corrections.py --weights-seeds 0 1 2")
    p.add_argument("--model", default="sd3-tiny", help="a [text; image] model (default: %(default)s)")
    p.add_argument("--guidance", type=float, nargs="+", default=[4.0, 1.0])
    p.add_argument("--weights-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="random-weights seeds (the CLI's: 0)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--target-speedup", type=float, default=1.4)
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[1, 2, 3], help="held-out noise seeds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny model: threads only contend on a shared machine
    spec = get_spec(args.model)
    cases = []
    for seed in args.weights_seeds:
        for guidance in args.guidance:
            cases.append(one_case(spec, seed, guidance, args.steps, args.target_speedup, args.eval_seeds))
            print(table(cases[-1:]), flush=True)
    command = "python benchmarks/stream_corrections.py" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    record = {"command": command, "model": args.model, "steps": args.steps, "target_speedup": args.target_speedup,
              "eval_seeds": args.eval_seeds, "torch": torch.__version__, "python": platform.python_version(),
              "cases": cases}
    write_atomic(args.out / "results.json", repo_relative(json.dumps(record, indent=2) + "\n"), mkdir=True)
    write_atomic(args.out / "results.md", repo_relative(f"`{command}`\n\n{table(cases)}"), mkdir=True)
    print(table(cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
