"""The adaptive kind in ``calibrate`` (``--adaptive SIGNAL``: probe and output change curves, the rescale polynomial)
and ``auto-schedule --kind adaptive`` (a schedule whose threshold is given or solved for a target speedup on the
calibration runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def replay_range(text: str):
    """``rest`` or ``START,END``."""
    if text == "rest":
        return text
    try:
        start, end = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give 'rest' or a block range START,END such as 1,12 "
                                         f"(got {text!r})") from None
    return (start, end)


def add_calibrate_args(p: argparse.ArgumentParser) -> None:
    """``calibrate``'s adaptive options."""
    from ditcache.graphs.adaptive import SIGNALS

    p.add_argument("--adaptive", choices=SIGNALS,
                   help="measure this adaptive signal's change against the output's per step and fit the rescale "
                        "polynomial (writes an adaptive calibration file instead of change curves)")
    p.add_argument("--replay", type=replay_range, default="rest",
                   help="--adaptive: the replayed block range, 'rest' or START,END (default: %(default)s)")
    p.add_argument("--degree", type=int, default=4, help="--adaptive: degree of the rescale polynomial (default 4)")


def add_auto_schedule_args(p: argparse.ArgumentParser) -> None:
    """``auto-schedule``'s adaptive options."""
    p.add_argument("--kind", default="block-cache", choices=("block-cache", "adaptive"),
                   help="block-cache (from --curves) or adaptive (from --calibration; --target-speedup runs the "
                        "eager dispatcher on the calibration's seeds)")
    p.add_argument("--calibration", help="adaptive: file from `ditcache calibrate --adaptive SIGNAL` (--target-speedup "
                                          "runs the model of --weights / --random-weights on its seeds)")
    p.add_argument("--warmup", type=int, default=2, help="adaptive: first steps always computed (default 2)")
    p.add_argument("--final", type=int, default=1, help="adaptive: last steps always computed (default 1)")
    p.add_argument("--max-consecutive", type=int, default=3, help="adaptive: replays in a row at most (default 3)")


def cmd_calibrate_adaptive(args: argparse.Namespace) -> int:
    from ditcache.compiler.atomic import write_atomic
    from ditcache.compiler.calibration.adaptive import measure_adaptive
    from ditcache.compiler.runtime.sampling import SampleRequest

    from .inputs import load, prompts

    spec, model, info = load(args)
    embeddings = prompts(args, spec)  # text models: the prompts, else None
    classes = () if embeddings is not None else tuple(
        args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    requests = [SampleRequest(classes, args.steps, args.guidance, s, args.scheduler, prompts=embeddings)
                for s in args.seeds]
    curves = measure_adaptive(model, spec, requests, args.adaptive, args.replay, args.degree, info.sha256,
                              progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, curves.to_json())
    print(f"{spec.name}: {args.adaptive} signal vs output change over {curves.steps} {args.scheduler} steps, "
          f"{curves.count} (row, step) pairs; rescale polynomial {['%.4g' % c for c in curves.rescale]}; wrote {out}")
    return 0


def cmd_auto_schedule_adaptive(args: argparse.Namespace) -> int:
    from ditcache.compiler.atomic import write_atomic
    from ditcache.graphs import costs_for, load_schedule
    from ditcache.graphs.adaptive import AdaptivePolicy
    from ditcache.graphs.adaptive_curves import AdaptiveCurves
    from ditcache.graphs.configs import AdaptiveConfig
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.registry import get_spec

    if getattr(args, "objective", "change-curves") != "change-curves" or args.curves is not None:
        raise ValueError("--kind adaptive takes --calibration (from `ditcache calibrate --adaptive SIGNAL`), not "
                         "--objective error or --curves")
    if (args.threshold is None) == (args.target_speedup is None):
        raise ValueError("give exactly one of --threshold and --target-speedup")
    if not args.calibration:
        raise ValueError("auto-schedule --kind adaptive needs --calibration FILE (from `ditcache calibrate "
                         "--adaptive SIGNAL`)")
    curves = AdaptiveCurves.load(args.calibration)
    meta = curves.meta
    spec = get_spec(meta.get("model", args.model))
    replay = "rest" if (curves.replay[0], curves.replay[1]) == AdaptivePolicy(
        curves.steps, 0.0, curves.signal).replay_range(spec.num_blocks) else tuple(curves.replay)
    policy = AdaptivePolicy(steps=curves.steps, threshold=0.0 if args.threshold is None else float(args.threshold),
                            signal=curves.signal, replay=replay, warmup=args.warmup, final=args.final,
                            max_consecutive=args.max_consecutive, rescale=tuple(curves.rescale), cache=args.cache)
    header = (f"# adaptive ({curves.signal}) from {Path(args.calibration).name} ({meta.get('model')}, "
              f"{meta.get('sampler')}, guidance {meta.get('guidance')})\n")
    if args.target_speedup is not None:
        from ditcache.compiler.calibration.adaptive import threshold_for_speedup
        from ditcache.compiler.runtime.sampling import SampleRequest
        from ditcache.graphs.weights import load_model

        model, info = load_model(spec, args.weights, args.random_weights)
        if meta.get("weights_sha256") and info.sha256 != meta["weights_sha256"]:
            raise ValueError(f"the weights {info.source} are not the ones {args.calibration} was measured with "
                             f"(sha256 {info.sha256[:12]} vs {meta['weights_sha256'][:12]}); pass the right --weights")
        requests = [SampleRequest(tuple(meta["classes"]), curves.steps, float(meta["guidance"]), s, meta["sampler"])
                    for s in meta["seeds"]]
        threshold, speedup = threshold_for_speedup(model.eval(), spec, policy, requests, args.target_speedup)
        policy = AdaptivePolicy(**{**policy.__dict__, "threshold": threshold})
        header += (f"# threshold solved for {args.target_speedup}x (MACs) on the calibration runs: {speedup:.3f}x "
                   f"over {len(requests)} runs of {len(meta['classes'])} classes\n")
    config = AdaptiveConfig.from_policy(policy)
    out = write_atomic(args.out, config.to_yaml(args.out, header))
    plan = plan_for(load_schedule(out), spec)
    low, high = plan.macs_bounds(costs_for(spec))
    print(f"wrote {out}: adaptive {curves.signal}, threshold {policy.threshold:.4g}, theoretical speedup between "
          f"1.00x and {high / low:.2f}x on {spec.name} (decided at run time)")
    return 0
