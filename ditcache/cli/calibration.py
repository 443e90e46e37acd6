"""``ditcache calibrate``, ``auto-schedule`` and ``fit-correction``: block caching from measured change curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import (add_model_args, add_sampling_args, add_text_args, check_output_file, existing_file,
                        guidance_scale, nonnegative_int, number_at_least, output_file, positive_int, seed)
from .adaptive import add_auto_schedule_args as add_auto_schedule_adaptive_args
from .adaptive import add_calibrate_args as add_calibrate_adaptive_args
from .adaptive import cmd_auto_schedule_adaptive, cmd_calibrate_adaptive
from .inputs import load, prompts, sampling_defaults


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ditcache.compiler.calibration.curves import calibrate, plot_curves, save_curves
    from ditcache.compiler.runtime.sampling import SampleRequest

    if args.adaptive:  # the adaptive kind's probe/output curves and rescale polynomial (cli/adaptive.py)
        return cmd_calibrate_adaptive(args)
    spec, model, info = load(args)
    embeddings = prompts(args, spec)  # text models: the prompts, else None
    classes = () if embeddings is not None else tuple(
        args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    requests = [SampleRequest(classes, args.steps, args.guidance, s, args.scheduler, prompts=embeddings)
                for s in args.seeds]
    curves = calibrate(model, spec, requests, info.sha256, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_curves(curves, out)
    written = [str(out)]
    if args.plot:
        plot_curves(curves, args.plot)
        written.append(args.plot)
    print(f"{spec.name}: change curves of {curves.num_blocks} blocks over {curves.steps} {args.scheduler} steps, "
          f"{curves.count} samples ({embeddings.num_images if embeddings is not None else len(classes)} "
          f"{'prompts' if embeddings is not None else 'classes'} x {len(args.seeds)} seeds, guidance {args.guidance}); "
          f"wrote {', '.join(written)}")
    return 0


def cmd_auto_schedule(args: argparse.Namespace) -> int:
    from ditcache.compiler.atomic import write_atomic
    from ditcache.graphs import costs_for, load_schedule
    from ditcache.graphs.auto_schedule import threshold_for_target
    from ditcache.graphs.configs import BlockCacheConfig
    from ditcache.graphs.curves import ChangeCurves
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec

    if getattr(args, "kind", "block-cache") == "adaptive":  # cli/adaptive.py
        return cmd_auto_schedule_adaptive(args)
    if getattr(args, "objective", "change-curves") == "error":
        return cmd_auto_schedule_error(args)
    if args.curves is None:
        raise ValueError("--objective change-curves needs --curves FILE (make one with `ditcache calibrate`); or "
                         "search with --objective error --weights W --target-speedup X")
    used = [flag for flag, value in (("--mac-fraction", args.mac_fraction), ("--beam-width", args.beam_width),
                                     ("--unit-blocks", args.unit_blocks), ("--weights", args.weights),
                                     ("--random-weights", args.random_weights), ("--steps", args.steps),
                                     ("--classes", args.classes), ("--scheduler", args.scheduler),
                                     ("--guidance", args.guidance)) if value is not None and value is not False]
    if used:
        raise ValueError(f"{used[0]} applies to --objective error; drop it (change curves take --threshold or "
                         f"--target-speedup)")
    if (args.threshold is None) == (args.target_speedup is None):
        raise ValueError("give exactly one of --threshold and --target-speedup")
    curves = ChangeCurves.load(args.curves)
    spec = get_spec(curves.meta.get("model", args.model))
    threshold = args.threshold
    if threshold is None:
        threshold = threshold_for_target(curves.mean, args.target_speedup, costs_for(spec))
    config = BlockCacheConfig(steps=curves.steps, threshold=float(threshold), curves=args.curves, cache=args.cache)
    header = (f"# block caching from {Path(args.curves).name} ({curves.meta.get('model')}, "
              f"{curves.meta.get('sampler')}, guidance {curves.meta.get('guidance')})\n")
    if args.target_speedup is not None:
        header += f"# threshold solved for a target speedup of {args.target_speedup}x (MACs)\n"
    out = write_atomic(args.out, config.to_yaml(args.out, header))  # curves: relative to the schedule's folder
    plan = plan_for(load_schedule(out), spec)
    print(f"wrote {out}: threshold {threshold:.4g}, {len(plan.variants)} variants, theoretical speedup "
          f"{plan.theoretical_speedup(costs_for(spec)):.2f}x on {spec.name}")
    return 0


def cmd_auto_schedule_error(args: argparse.Namespace) -> int:
    """``auto-schedule --objective error``: search the replays for the least measured error at a MAC budget."""
    from ditcache.compiler.atomic import write_atomic, write_json_atomic
    from ditcache.compiler.calibration.search import calibration_batch, error_driven_schedule
    from ditcache.graphs import costs_for, load_schedule, parts_for
    from ditcache.graphs.auto_schedule import MacBudget, SearchSpace, block_units, check_reachable
    from ditcache.graphs.configs import relative_path
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec

    for flag, value in (("--curves", args.curves), ("--threshold", args.threshold)):
        if value is not None:
            raise ValueError(f"{flag} belongs to --objective change-curves; --objective error measures the model "
                             f"itself: drop {flag} and give --weights (or --random-weights)")
    budget = MacBudget.of(args.target_speedup, args.mac_fraction)
    spec = get_spec(args.model)
    if spec.text_conditioned:
        raise ValueError(f"{spec.name} is text-conditioned: --objective error searches class-conditional models "
                         f"for now; use --objective change-curves (`ditcache calibrate` takes prompts)")
    steps = args.steps or 20
    check_reachable(SearchSpace(spec.num_blocks, steps, block_units(spec.num_blocks, args.unit_blocks or 1),
                                args.cache), costs_for(spec), budget)  # before loading anything
    sidecar = search_metadata_path(args.out)
    check_output_file(sidecar, "the search record")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # before the search: nothing fails after it
    spec, model, info = load(args)
    request = calibration_batch(args.seeds, args.classes, spec.num_classes, steps, args.guidance, args.scheduler)
    found = error_driven_schedule(parts_for(model, spec), spec, request, budget, args.cache, args.unit_blocks or 1,
                                  args.beam_width or 1, progress=not args.quiet)
    final = found.final
    header = (f"# error-driven block caching searched on {spec.name} ({args.scheduler}, guidance {args.guidance}, "
              f"{steps} steps): {found.budget.label} MAC budget, {request.num_images} calibration images\n"
              f"# measured on them: final-sample PSNR {final.psnr_db:.2f} dB, relative L2 {final.relative_l2:.4g} vs "
              f"full; details in {sidecar.name}\n"
              f"# sample with --scheduler {args.scheduler} --guidance {args.guidance}: the search measured those\n")
    out = write_atomic(args.out, found.config.to_yaml(args.out, header))
    folder = Path(out).resolve().parent
    weights = {"sha256": info.sha256, "random": info.random}
    if not info.random and info.source and Path(str(info.source)).exists():
        weights["path"] = relative_path(info.source, folder)  # relative to the schedule's folder
    metadata = found.metadata(request, args.beam_width or 1, {"model": spec.name, "weights": weights,
                                                              "schedule": Path(out).name})
    write_json_atomic(sidecar, metadata)
    plan = plan_for(load_schedule(out), spec)
    print(f"wrote {out} and {sidecar.name}: {len(found.result.moves)} block replays, {len(plan.variants)} variants, "
          f"theoretical speedup {plan.theoretical_speedup(costs_for(spec)):.2f}x on {spec.name}; on the "
          f"{request.num_images} calibration images the final samples are {final.psnr_db:.2f} dB PSNR "
          f"(relative L2 {final.relative_l2:.4g}) from the full run's")
    return 0


def search_metadata_path(schedule: str | Path) -> Path:
    """``<schedule stem>.search.json`` beside the schedule: what the error-driven search measured."""
    schedule = Path(schedule)
    return schedule.with_name(schedule.stem + ".search.json")


def cmd_fit_correction(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditcache.compiler.atomic import write_atomic
    from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections, save_corrections
    from ditcache.graphs import parts_for
    from ditcache.graphs.configs import BlockCacheConfig
    from ditcache.graphs.corrections import layout_metadata
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.streams import streams_of
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.schedule import load_schedule

    check_output_file(corrected_schedule_path(args), "the corrected schedule (--schedule-out)")
    spec = get_spec(args.model)
    sampling_defaults(args, spec)
    schedule = load_schedule(args.schedule)
    if schedule.kind != "block-cache":
        raise ValueError(f"scale/shift correction applies to block-cache schedules, {args.schedule} is {schedule.kind}")
    plan = plan_for(schedule, spec, sampler=args.scheduler, guidance=args.guidance)  # before any work
    spec, model, info = load(args)
    embeddings = prompts(args, spec)  # text models: the prompts, else None
    classes = () if embeddings is not None else tuple(
        args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    request = calibration_request(classes, args.seeds, schedule.steps, args.guidance, args.scheduler, embeddings)
    metadata = {"model": spec.name, "weights_sha256": info.sha256, "plan_hash": plan.hash(),
                "sampler": args.scheduler, "guidance": str(args.guidance), "method": args.method,
                **layout_metadata(streams_of(parts_for(model, spec)))}  # per channel, or per stream (FLUX, SD3)
    tensors = None
    if args.method == "closed-form" or args.init == "closed-form":
        tensors = fit_corrections(model, spec, plan, request, progress=not args.quiet)
    how = "closed-form"
    if args.method == "trained":
        from ditcache.compiler.calibration.correction_train import train_corrections

        tensors, log = train_corrections(model, spec, plan, request, init=tensors, epochs=args.epochs, lr=args.lr,
                                         progress=not args.quiet)
        how = f"trained ({args.epochs} epochs from {args.init}, lr {args.lr})"
        metadata.update(init=args.init, epochs=str(args.epochs), lr=str(args.lr),
                        initial_loss=f"{log.initial_loss:.6g}", final_loss=f"{log.final_loss:.6g}")
        print(f"output MSE vs the full model on replay steps: {log.initial_loss:.4g} ({args.init}) -> "
              f"{log.final_loss:.4g} after {args.epochs} epochs")
    out = Path(args.out)
    save_corrections(tensors, out, metadata)
    corrected = replace(BlockCacheConfig.from_file(args.schedule), scale_shift=out)
    target = corrected_schedule_path(args)
    header = f"# {Path(args.schedule).name} with {how} scale/shift fitted on {request.num_images} images\n"
    target = write_atomic(target, corrected.to_yaml(target, header))  # paths relative to the schedule's folder
    print(f"fitted scale/shift for {len(plan.ranges)} replayed blocks over {plan.num_steps} steps on "
          f"{request.num_images} images; wrote {out} and {target}")
    return 0


def corrected_schedule_path(args: argparse.Namespace) -> Path:
    """--schedule-out, or ``<schedule>-corrected.yaml`` beside --schedule."""
    schedule = Path(args.schedule)
    return Path(args.schedule_out or schedule.with_name(schedule.stem + "-corrected.yaml"))


def register(sub, epilog: str) -> None:
    """The ``calibrate``, ``auto-schedule`` and ``fit-correction`` subcommands."""
    p = sub.add_parser("calibrate", help="measure per-block change curves (block caching)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_sampling_args(p)
    add_text_args(p)
    p.set_defaults(seed=None)
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (the schedule must use the same)")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1], help="one full sampling run per seed")
    p.add_argument("--out", type=output_file, default="curves.json", help="curves file (default: %(default)s)")
    p.add_argument("--plot", type=output_file, help="PNG with the heatmap and per-block curves")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_calibrate_adaptive_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("auto-schedule", help="block-cache schedule.yaml from curves and a threshold or target",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", default="change-curves", choices=("change-curves", "error"),
                   help="change-curves: threshold the measured change curves (the block-caching paper's rule); "
                        "error: search which blocks replay at which steps for the least measured error of the "
                        "final samples at the MAC budget, on calibration seeds (docs/error-driven.md) "
                        "(default: %(default)s)")
    p.add_argument("--curves", type=existing_file, help="change-curves: curves file from `ditcache calibrate`")
    p.add_argument("--threshold", type=number_at_least(0.0, "give the accumulated change δ, e.g. 0.1"),
                   help="δ: recompute when the accumulated change would exceed it")
    p.add_argument("--target-speedup", type=number_at_least(1.0, "give a speedup of at least 1, e.g. 1.5"),
                   help="solve δ for this theoretical speedup (MACs)")
    p.add_argument("--cache", default="offset", choices=("offset", "output"), help="residual or output replay")
    p.add_argument("--model", default="dit-fmnist", help="model for MACs when the curves do not name one; error: "
                                                         "the model searched")
    p.add_argument("--out", type=output_file, default="schedule.yaml")
    from ditcache.compiler.runtime.sampling import SCHEDULERS

    error = p.add_argument_group("--objective error", "search on calibration seeds (the model is run)")
    error.add_argument("--mac-fraction", type=number_at_least(0.0, "give a fraction of the full MACs in (0, 1], "
                                                                  "e.g. 0.5", strict=True),
                       help="the MAC budget as a fraction of the full run's (instead of --target-speedup)")
    error.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (default: the shipped "
                                         "weights of --model where there are some)")
    error.add_argument("--random-weights", action="store_true", help="random initialisation (tests only)")
    error.add_argument("--seeds", type=seed, nargs="+", default=list(range(8)),
                       help="calibration noise seeds, one image each (default: 0..7)")
    error.add_argument("--classes", type=nonnegative_int, nargs="+",
                       help="one image per (seed, class) (default: image i has class i %% 10)")
    error.add_argument("--steps", type=positive_int, help="sampling steps (default: 20)")
    error.add_argument("--scheduler", choices=SCHEDULERS, help="sampler (default: the model's)")
    error.add_argument("--guidance", type=guidance_scale, help="guidance scale (default: the model's)")
    error.add_argument("--unit-blocks", type=positive_int,
                       help="blocks per cache unit: replayed together, fewer moves to search (default: 1)")
    error.add_argument("--beam-width", type=positive_int,
                       help="beam search of this width instead of the (lazy) greedy search (default: 1, greedy)")
    error.add_argument("--quiet", action="store_true", help="no progress bars")
    add_auto_schedule_adaptive_args(p.add_argument_group("--kind adaptive", "a schedule decided at run time "
                                                         "(docs/adaptive.md)"))
    p.set_defaults(func=cmd_auto_schedule)

    p = sub.add_parser("fit-correction", help="fit block caching's per-channel scale/shift (closed form or trained)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_sampling_args(p)
    add_text_args(p)
    p.add_argument("--schedule", required=True, help="block-cache schedule.yaml to correct")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1], help="noise seeds per class")
    p.add_argument("--out", type=output_file, default="corrections.safetensors")
    p.add_argument("--schedule-out", type=output_file, help="corrected schedule (default: <schedule>-corrected.yaml)")
    p.add_argument("--method", default="closed-form", choices=("closed-form", "trained"),
                   help="closed-form: per-block least squares on the block outputs (training-free); trained: the "
                        "paper's short distillation of the denoiser output onto the full model's "
                        "(default: %(default)s)")
    p.add_argument("--init", default="closed-form", choices=("closed-form", "identity"),
                   help="trained: starting point (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=30, help="trained: sampling runs, one Adam step each")
    p.add_argument("--lr", type=number_at_least(0.0, "give a learning rate such as 5e-3", strict=True), default=5e-3,
                   help="trained: Adam learning rate (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit_correction)
