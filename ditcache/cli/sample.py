"""``ditcache sample`` (the eager runtime) and ``ditcache run`` (the compiled runner of an engine directory)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .arguments import (add_model_args, add_sampling_args, add_text_args, existing_folder, output_folder,
                        positive_int)
from .inputs import load, prompts, sampling_defaults, schedule


def write_samples(latents, spec, vae: str | None, out: Path, columns: int) -> list[str]:
    """latents.pt, latents.npy and (pixel models, or latent ones with a VAE) grid.png in ``out``, each atomically;
    the names written."""
    import numpy as np
    import torch

    from ditcache.compiler.atomic import atomic_path
    from ditcache.images import decode, grid, save_png, to_uint8

    latents = latents.cpu()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "latents.pt") as tmp:
        torch.save(latents, tmp)
    with atomic_path(out / "latents.npy") as tmp:
        np.save(tmp, latents.numpy())
    written = ["latents.pt", "latents.npy"]
    images = decode(latents, spec, vae)
    if images is not None:
        save_png(grid(to_uint8(images), columns=columns), out / "grid.png", scale=1 if spec.latent else 2)
        written.append("grid.png")
    return written


def report_decisions(dispatcher, out: Path, show: bool) -> None:
    """An adaptive run's decisions: decisions.json in ``out`` (atomic), and the table with ``--show-decisions``."""
    decisions = getattr(dispatcher, "decisions", None)
    if decisions is None:
        if show:
            print("  (static schedule: no run-time decisions)")
        return
    import json

    from ditcache.compiler.atomic import write_atomic
    from ditcache.compiler.runtime.decider import decisions_table

    write_atomic(out / "decisions.json", json.dumps([d.to_dict() for d in decisions], indent=1) + "\n")
    if show:
        print(decisions_table(decisions))


def cmd_sample(args: argparse.Namespace) -> int:
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec

    spec = get_spec(args.model)
    sampling_defaults(args, spec)
    sched = schedule(args)
    plan = plan_for(sched, spec, sampler=args.scheduler, guidance=args.guidance)  # before any work
    spec, model, info = load(args)
    embeddings = prompts(args, spec)
    classes = () if embeddings is not None else tuple(args.classes if args.classes is not None else
                                                      range(min(10, spec.num_classes)))
    request = SampleRequest(classes, sched.steps, args.guidance, args.seed, args.scheduler, prompts=embeddings)
    dispatcher = eager_dispatcher(model, spec, plan)
    start = time.perf_counter()
    latents = sample_with_plan(dispatcher, spec, request, progress=not args.quiet)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    written = write_samples(latents, spec, args.vae, out, min(request.num_images, 10))
    print(f"{spec.name}: {request.num_images} images, {sched.kind} schedule, {request.steps} {request.scheduler} "
          f"steps, guidance {request.guidance_scale}, seed {request.seed}: {seconds:.2f} s (eager); "
          f"wrote {', '.join(str(out / w) for w in written)}")
    if "grid.png" not in written:
        print("  (latent model without --vae: no image written)")
    report_decisions(dispatcher, out, args.show_decisions)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.load import load_engines
    from ditcache.export.manifest import Manifest
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.schedule import load_schedule

    spec = get_spec(Manifest.read(Path(args.engines)).model["name"])
    sampling_defaults(args, spec)
    embeddings = prompts(args, spec)
    if embeddings is None and not args.classes:
        raise ValueError(f"{spec.name} is class-conditional: give --classes (one label per image)")
    classes = () if embeddings is not None else tuple(args.classes)
    images = embeddings.num_images if embeddings is not None else len(classes)
    check = {"images": images, "guidance": spec.cfg_batch(args.guidance)}
    if args.schedule:
        check["schedule"] = load_schedule(args.schedule)
    loaded = load_engines(args.engines, weights=args.weights, device=args.device, **check)
    request = SampleRequest(classes, loaded.plan.num_steps, args.guidance, args.seed, args.scheduler,
                            prompts=embeddings)
    device = args.device or loaded.manifest.backend["settings"]["device"]
    sample_with_plan(loaded.dispatcher, loaded.spec, request, device=device)  # warm-up / compile
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        latents = sample_with_plan(loaded.dispatcher, loaded.spec, request, device=device)
        times.append(time.perf_counter() - start)
    out = Path(args.out)
    write_samples(latents, loaded.spec, args.vae, out, min(request.num_images, 10))
    m = loaded.manifest
    print(f"{loaded.spec.name} via {m.backend['name']} ({m.granularity}, {m.backend['settings']['precision']}): "
          f"{request.num_images} images, {request.steps} {request.scheduler} steps, "
          f"median {sorted(times)[len(times) // 2]:.3f} s over {args.repeats} runs (compile/warm-up excluded); "
          f"wrote {out}")
    report_decisions(loaded.dispatcher, out, args.show_decisions)
    return 0


def register_sample(sub, epilog: str) -> None:
    """The ``sample`` subcommand."""
    p = sub.add_parser("sample", help="sample with the eager runtime", epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_sampling_args(p)
    add_text_args(p)
    p.add_argument("--schedule", help="schedule.yaml (default: full)")
    p.add_argument("--steps", type=positive_int,
                   help="steps of the full schedule when no --schedule is given (default 50)")
    p.add_argument("--vae", type=existing_folder, help="local diffusers VAE folder, to decode latent models to PNG")
    p.add_argument("--out", type=output_folder, default="samples", help="output folder (default: %(default)s)")
    p.add_argument("--show-decisions", action="store_true",
                   help="adaptive schedules: print each step's decision (also written to OUT/decisions.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)


def register_run(sub, epilog: str) -> None:
    """The ``run`` subcommand."""
    p = sub.add_parser("run", help="the compiled runner: sample from an engine directory",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", required=True, help="engine directory written by export-engines")
    p.add_argument("--schedule", help="check that the engines were built for this schedule")
    p.add_argument("--weights", help="model weights (inductor/eager engines compile from them; checked by sha256)")
    p.add_argument("--device", help="override the device the engines were built for")
    p.add_argument("--repeats", type=positive_int, default=1, help="timed runs after one warm-up")
    p.add_argument("--vae", type=existing_folder, help="local diffusers VAE folder, to decode latent models to PNG")
    p.add_argument("--out", type=output_folder, default="samples", help="output folder (default: %(default)s)")
    p.add_argument("--show-decisions", action="store_true",
                   help="adaptive schedules: print each step's decision (also written to OUT/decisions.json)")
    add_sampling_args(p)
    add_text_args(p)
    p.set_defaults(func=cmd_run)
