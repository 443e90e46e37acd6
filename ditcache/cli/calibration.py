"""``ditcache calibrate``, ``auto-schedule`` and ``fit-correction``: block caching from measured change curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import (add_model_args, add_sampling_args, check_output_file, existing_file, number_at_least,
                        output_file, positive_int, seed)
from .inputs import load, sampling_defaults


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ditcache.compiler.calibration.curves import calibrate, plot_curves, save_curves
    from ditcache.compiler.runtime.sampling import SampleRequest

    spec, model, info = load(args)
    classes = tuple(args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    requests = [SampleRequest(classes, args.steps, args.guidance, s, args.scheduler) for s in args.seeds]
    curves = calibrate(model, spec, requests, info.sha256, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_curves(curves, out)
    written = [str(out)]
    if args.plot:
        plot_curves(curves, args.plot)
        written.append(args.plot)
    print(f"{spec.name}: change curves of {curves.num_blocks} blocks over {curves.steps} {args.scheduler} steps, "
          f"{curves.count} samples ({len(classes)} classes x {len(args.seeds)} seeds, guidance {args.guidance}); "
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


def cmd_fit_correction(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ditcache.compiler.atomic import write_atomic
    from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections, save_corrections
    from ditcache.graphs.configs import BlockCacheConfig
    from ditcache.graphs.planning import plan_for
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
    classes = tuple(args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    request = calibration_request(classes, args.seeds, schedule.steps, args.guidance, args.scheduler)
    metadata = {"model": spec.name, "weights_sha256": info.sha256, "plan_hash": plan.hash(),
                "sampler": args.scheduler, "guidance": str(args.guidance), "method": args.method}
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
    header = f"# {Path(args.schedule).name} with {how} scale/shift fitted on {len(request.class_labels)} images\n"
    target = write_atomic(target, corrected.to_yaml(target, header))  # paths relative to the schedule's folder
    print(f"fitted scale/shift for {len(plan.ranges)} replayed blocks over {plan.num_steps} steps on "
          f"{len(request.class_labels)} images; wrote {out} and {target}")
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
    p.set_defaults(seed=None)
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (the schedule must use the same)")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1], help="one full sampling run per seed")
    p.add_argument("--out", type=output_file, default="curves.json", help="curves file (default: %(default)s)")
    p.add_argument("--plot", type=output_file, help="PNG with the heatmap and per-block curves")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("auto-schedule", help="block-cache schedule.yaml from curves and a threshold or target",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=existing_file, required=True, help="curves file from `ditcache calibrate`")
    p.add_argument("--threshold", type=number_at_least(0.0, "give the accumulated change δ, e.g. 0.1"),
                   help="δ: recompute when the accumulated change would exceed it")
    p.add_argument("--target-speedup", type=number_at_least(1.0, "give a speedup of at least 1, e.g. 1.5"),
                   help="solve δ for this theoretical speedup (MACs)")
    p.add_argument("--cache", default="offset", choices=("offset", "output"), help="residual or output replay")
    p.add_argument("--model", default="dit-fmnist", help="model for MACs when the curves do not name one")
    p.add_argument("--out", type=output_file, default="schedule.yaml")
    p.set_defaults(func=cmd_auto_schedule)

    p = sub.add_parser("fit-correction", help="fit block caching's per-channel scale/shift (closed form or trained)",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_sampling_args(p)
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
