"""The ``ditcache`` command: show-plan, sample, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  ditcache demo
  ditcache show-plan --model dit-xl --schedule schedules/dit-xl-delta-20.yaml
  ditcache sample --model dit-fmnist --schedule schedules/fmnist-delta-20.yaml --classes 0 1 2 --out out/
  ditcache sample --model dit-xl --random-weights --steps 20 --classes 207 --out out/   # timing only
"""


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    from ditcache.graphs.registry import MODELS

    parser.add_argument("--model", default="dit-fmnist", choices=list(MODELS), help="registry model (default: %(default)s)")
    parser.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (local paths only)")
    parser.add_argument("--random-weights", action="store_true", help="random initialisation: timing only, images are noise")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    from ditcache.compiler.sampling import SCHEDULERS

    parser.add_argument("--scheduler", default="ddim", choices=SCHEDULERS, help="sampler (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale; <= 1 disables it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, nargs="+", help="one class label per image (default: 0..9)")


def _load(args: argparse.Namespace):
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(args.model)
    model, info = load_model(spec, args.weights, args.random_weights)
    if info.random:
        print(f"WARNING: {spec.name} has RANDOM weights ({info.source}): timings are real, images are noise",
              file=sys.stderr)
    return spec, model, info


def _schedule(args: argparse.Namespace):
    from ditcache.graphs.schedule import full_schedule, load_schedule

    if args.schedule:
        schedule = load_schedule(args.schedule)
        if args.steps is not None and args.steps != schedule.steps:
            raise ValueError(f"--steps {args.steps} contradicts the schedule's steps: {schedule.steps}; drop --steps")
        return schedule
    return full_schedule(args.steps or 50)


def cmd_show_plan(args: argparse.Namespace) -> int:
    from ditcache.graphs import costs_for
    from ditcache.graphs.registry import get_spec

    spec = get_spec(args.model)
    schedule = _schedule(args)
    costs = costs_for(spec, args.batch)
    plan = schedule.to_plan(spec.num_blocks, costs_for(spec))
    if args.json:
        data = plan.to_dict()
        data.update(model=spec.name, step_macs=plan.step_macs(costs), theoretical_speedup=plan.theoretical_speedup(costs),
                    plan_hash=plan.hash())
        print(json.dumps(data, indent=2))
    else:
        print(f"model {spec.name} ({spec.num_blocks} blocks), batch {args.batch}, schedule {schedule.source}")
        print(f"schedule: {json.dumps(plan.schedule)}")
        print(plan.table(costs))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ditcache.compiler.images import decode, grid, save_png, to_uint8
    from ditcache.compiler.runner import eager_dispatcher, plan_for, sample_with_plan
    from ditcache.compiler.sampling import SampleRequest

    spec, model, info = _load(args)
    schedule = _schedule(args)
    plan = plan_for(schedule, spec)
    classes = tuple(args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    request = SampleRequest(classes, schedule.steps, args.guidance, args.seed, args.scheduler)
    dispatcher = eager_dispatcher(model, spec, plan)
    start = time.perf_counter()
    latents = sample_with_plan(dispatcher, spec, request, progress=not args.quiet)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(latents, out / "latents.pt")
    import numpy as np

    np.save(out / "latents.npy", latents.numpy())
    written = ["latents.pt", "latents.npy"]
    images = decode(latents, spec, args.vae)
    if images is not None:
        save_png(grid(to_uint8(images), columns=min(len(classes), 10)), out / "grid.png", scale=2 if not spec.latent else 1)
        written.append("grid.png")
    print(f"{spec.name}: {len(classes)} images, {schedule.kind} schedule, {request.steps} {request.scheduler} steps, "
          f"guidance {request.guidance_scale}, seed {request.seed}: {seconds:.2f} s (eager); "
          f"wrote {', '.join(str(out / w) for w in written)}")
    if images is None:
        print("  (latent model without --vae: no image written)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ditcache.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ditcache", description=__doc__,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("show-plan", help="print the per-step plan of a schedule", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dit-xl", help="registry model (default: %(default)s)")
    p.add_argument("--schedule", help="schedule.yaml (default: full)")
    p.add_argument("--steps", type=int, help="steps of the full schedule when no --schedule is given")
    p.add_argument("--batch", type=int, default=1, help="images per call for the MACs column")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_show_plan)

    p = sub.add_parser("sample", help="sample with the eager runtime", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--schedule", help="schedule.yaml (default: full)")
    p.add_argument("--steps", type=int, help="steps of the full schedule when no --schedule is given (default 50)")
    p.add_argument("--vae", help="local diffusers VAE folder, to decode latent models to PNG")
    p.add_argument("--out", default="samples", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="the main job: full vs cached sampling on the shipped model",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per schedule after one warm-up")
    p.add_argument("--weights", help="other dit-fmnist weights than the shipped ones")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"ditcache {args.command}: error: {exc}", file=sys.stderr)
        return 2
