"""The ``ditcache`` command: show-plan, sample, export-engines, run, calibrate, auto-schedule, fit-correction,
generate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  ditcache demo
  ditcache export-engines --model dit-fmnist --schedule schedules/fmnist-delta-20.yaml --backend onnxruntime --out engines/
  ditcache run --engines engines/ --classes 0 1 2 3 4 5 6 7 8 9 --out out/
  ditcache calibrate --model dit-fmnist --steps 20 --seeds 0 1 --out curves.json --plot curves.png
  ditcache auto-schedule --curves curves.json --target-speedup 1.5 --out schedule.yaml
  ditcache fit-correction --model dit-fmnist --schedule schedule.yaml --seeds 100 101 --out scale-shift.safetensors
  torchrun --standalone --nproc-per-node 2 -m ditcache generate --model dit-fmnist --schedule schedule.yaml --num-samples 1000 --out gen/
  ditcache show-plan --model dit-xl --schedule schedules/dit-xl-delta-20.yaml
  ditcache sample --model dit-fmnist --schedule schedules/fmnist-delta-20.yaml --classes 0 1 2 --out out/
  ditcache sample --model dit-xl --random-weights --steps 20 --classes 207 --out out/   # timing only
  ditcache sample --model pixart-256 --weights PixArt-XL-2-256x256/ --schedule schedules/pixart-delta-20.yaml \\
      --text-encoder t5-v1_1-xxl/ --prompt "a red fox in the snow" --vae sd-vae-ft-ema/ --out out/
  ditcache show-plan --model pixart-1024 --schedule schedules/pixart-delta-20.yaml
"""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    from ditcache.graphs.registry import MODELS

    parser.add_argument("--model", default="dit-fmnist", choices=list(MODELS), help="registry model (default: %(default)s)")
    parser.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (local paths only)")
    parser.add_argument("--random-weights", action="store_true", help="random initialisation: timing only, images are noise")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    from ditcache.compiler.runtime.sampling import SCHEDULERS

    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help="sampler (default: the model's: ddim for DiT, dpm++ for PixArt-α, lcm for PixArt-α-LCM)")
    parser.add_argument("--guidance", type=float,
                        help="classifier-free guidance scale; <= 1 disables it (default: the model's: 4.0 for DiT, "
                             "4.5 for PixArt-α, none for LCM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, nargs="+", help="one class label per image (default: 0..9)")


def _add_text_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", help="text-conditioned models: safetensors file with prompt_embeds, "
                                             "prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask")
    parser.add_argument("--text-encoder", help="text-conditioned models: local T5 folder (or pipeline folder with "
                                               "text_encoder/ and tokenizer/) to encode --prompt with")
    parser.add_argument("--prompt", nargs="+", help="one prompt per image (with --text-encoder)")
    parser.add_argument("--negative-prompt", default="", help="prompt guidance steers away from (default: empty)")


def _sampling_defaults(args: argparse.Namespace, spec) -> None:
    """Fill --scheduler and --guidance left out with the model's defaults."""
    if getattr(args, "scheduler", None) is None:
        args.scheduler = spec.sampler
    if getattr(args, "guidance", None) is None:
        args.guidance = spec.guidance_scale


def _prompts(args: argparse.Namespace, spec):
    """The prompt embeddings of a text-conditioned model (None for class-conditional ones), from --embeddings or
    encoded from --prompt with --text-encoder."""
    from ditcache.compiler.runtime.prompts import PromptEmbeddings, encode_prompts

    given = [flag for flag, value in (("--embeddings", args.embeddings), ("--text-encoder", args.text_encoder),
                                      ("--prompt", args.prompt)) if value]
    if not spec.text_conditioned:
        if given:
            raise ValueError(f"{spec.name} is class-conditional: {given[0]} applies to text-conditioned models; "
                             f"give --classes")
        return None
    if args.classes:
        raise ValueError(f"{spec.name} is text-conditioned: give prompts (--embeddings or --text-encoder with "
                         f"--prompt), not --classes")
    if args.embeddings and (args.text_encoder or args.prompt):
        raise ValueError("give either --embeddings FILE or --text-encoder DIR with --prompt, not both")
    if args.embeddings:
        return PromptEmbeddings.load(args.embeddings)
    if args.text_encoder:
        if not args.prompt:
            raise ValueError("--text-encoder encodes --prompt TEXT [TEXT ...]: give the prompts")
        return encode_prompts(args.text_encoder, args.prompt, args.negative_prompt, max_length=int(spec.text_length))
    raise ValueError(f"{spec.name} is text-conditioned: give --embeddings FILE (precomputed text-encoder "
                     f"embeddings) or --text-encoder DIR --prompt TEXT ...")


def _load(args: argparse.Namespace):
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(args.model)
    _sampling_defaults(args, spec)
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

    from ditcache.images import decode, grid, save_png, to_uint8
    from ditcache.compiler.runtime.runner import eager_dispatcher, plan_for, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest

    spec, model, info = _load(args)
    schedule = _schedule(args)
    plan = plan_for(schedule, spec)
    prompts = _prompts(args, spec)
    classes = () if prompts is not None else tuple(args.classes if args.classes is not None else
                                                   range(min(10, spec.num_classes)))
    request = SampleRequest(classes, schedule.steps, args.guidance, args.seed, args.scheduler, prompts=prompts)
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
        save_png(grid(to_uint8(images), columns=min(request.num_images, 10)), out / "grid.png",
                 scale=2 if not spec.latent else 1)
        written.append("grid.png")
    print(f"{spec.name}: {request.num_images} images, {schedule.kind} schedule, {request.steps} {request.scheduler} steps, "
          f"guidance {request.guidance_scale}, seed {request.seed}: {seconds:.2f} s (eager); "
          f"wrote {', '.join(str(out / w) for w in written)}")
    if images is None:
        print("  (latent model without --vae: no image written)")
    return 0


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--option takes KEY=VALUE (got {pair!r})")
        key, value = pair.split("=", 1)
        options[key] = json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false") else value
    return options


def _export_guidance(args: argparse.Namespace) -> bool:
    """Whether engines are built for guidance (a doubled batch): yes unless --no-guidance or the model samples
    without it by default (PixArt-α-LCM); --guidance-batch forces it."""
    from ditcache.graphs.registry import get_spec

    if args.no_guidance:
        return False
    return bool(args.guidance_batch) or get_spec(args.model).guidance_scale > 1


def cmd_export_engines(args: argparse.Namespace) -> int:
    from ditcache.export.export_engines import ExportRequest, export_engines

    request = ExportRequest(
        model=args.model, schedule=args.schedule, out=args.out, backend=args.backend, weights=args.weights,
        random_weights=args.random_weights, precision=args.precision, batch_size=args.batch_size,
        guidance=_export_guidance(args), resolution=args.resolution, granularity=args.granularity,
        device=args.device, options=_options(args.option), validate=not args.no_validate,
    )
    report = export_engines(request, log=lambda m: print(m, file=sys.stderr), progress=not args.quiet)
    if args.json:
        from dataclasses import asdict

        print(json.dumps({"directory": str(report.directory), "rebuilt": report.rebuilt,
                          "graphs": [asdict(g) for g in report.graphs], "seconds": report.seconds}, indent=2))
    else:
        print(report.summary())
        print(f"wrote {report.directory / 'manifest.json'}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ditcache.images import decode, grid, save_png, to_uint8
    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.load import load_engines
    from ditcache.export.manifest import Manifest
    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.schedule import load_schedule

    spec = get_spec(Manifest.read(Path(args.engines)).model["name"])
    _sampling_defaults(args, spec)
    prompts = _prompts(args, spec)
    if prompts is None and not args.classes:
        raise ValueError(f"{spec.name} is class-conditional: give --classes (one label per image)")
    classes = () if prompts is not None else tuple(args.classes)
    images = prompts.num_images if prompts is not None else len(classes)
    check = {"images": images, "guidance": args.guidance > 1}
    if args.schedule:
        check["schedule"] = load_schedule(args.schedule)
    loaded = load_engines(args.engines, weights=args.weights, device=args.device, **check)
    request = SampleRequest(classes, loaded.plan.num_steps, args.guidance, args.seed, args.scheduler, prompts=prompts)
    device = args.device or loaded.manifest.backend["settings"]["device"]
    sample_with_plan(loaded.dispatcher, loaded.spec, request, device=device)  # warm-up / compile
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        latents = sample_with_plan(loaded.dispatcher, loaded.spec, request, device=device)
        times.append(time.perf_counter() - start)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(latents.cpu(), out / "latents.pt")
    np.save(out / "latents.npy", latents.cpu().numpy())
    images = decode(latents.cpu(), loaded.spec, args.vae)
    if images is not None:
        save_png(grid(to_uint8(images), columns=min(request.num_images, 10)), out / "grid.png",
                 scale=1 if loaded.spec.latent else 2)
    m = loaded.manifest
    print(f"{loaded.spec.name} via {m.backend['name']} ({m.granularity}, {m.backend['settings']['precision']}): "
          f"{request.num_images} images, {request.steps} {request.scheduler} steps, median {sorted(times)[len(times) // 2]:.3f} s "
          f"over {args.repeats} runs (compile/warm-up excluded); wrote {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ditcache.compiler.calibration.curves import calibrate, plot_curves
    from ditcache.compiler.runtime.sampling import SampleRequest

    spec, model, info = _load(args)
    classes = tuple(args.classes if args.classes is not None else range(min(10, spec.num_classes)))
    requests = [SampleRequest(classes, args.steps, args.guidance, seed, args.scheduler) for seed in args.seeds]
    curves = calibrate(model, spec, requests, info.sha256, progress=not args.quiet)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    curves.save(out)
    written = [str(out)]
    if args.plot:
        plot_curves(curves, args.plot)
        written.append(args.plot)
    print(f"{spec.name}: change curves of {curves.num_blocks} blocks over {curves.steps} {args.scheduler} steps, "
          f"{curves.count} samples ({len(classes)} classes x {len(args.seeds)} seeds, guidance {args.guidance}); "
          f"wrote {', '.join(written)}")
    return 0


def cmd_auto_schedule(args: argparse.Namespace) -> int:
    import yaml

    from ditcache.compiler.calibration.curves import ChangeCurves
    from ditcache.graphs import costs_for, load_schedule
    from ditcache.graphs.auto_schedule import schedule_document, threshold_for_target
    from ditcache.graphs.registry import get_spec

    curves = ChangeCurves.load(args.curves)
    spec = get_spec(curves.meta.get("model", args.model))
    if (args.threshold is None) == (args.target_speedup is None):
        raise ValueError("give exactly one of --threshold and --target-speedup")
    threshold = args.threshold
    if threshold is None:
        threshold = threshold_for_target(curves.mean, args.target_speedup, costs_for(spec))
    document = schedule_document(args.curves, args.out, curves.steps, threshold, args.cache)
    header = (f"# block caching from {args.curves} ({curves.meta.get('model')}, {curves.meta.get('sampler')}, "
              f"guidance {curves.meta.get('guidance')})\n")
    if args.target_speedup is not None:
        header += f"# threshold solved for a target speedup of {args.target_speedup}x (MACs)\n"
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(header + yaml.safe_dump(document, sort_keys=False))
    tmp.replace(out)
    plan = load_schedule(out).to_plan(spec.num_blocks, costs_for(spec))
    print(f"wrote {out}: threshold {threshold:.4g}, {len(plan.variants)} variants, theoretical speedup "
          f"{plan.theoretical_speedup(costs_for(spec)):.2f}x on {spec.name}")
    return 0


def cmd_fit_correction(args: argparse.Namespace) -> int:
    import yaml

    from ditcache.compiler.calibration.correction_fit import calibration_request, fit_corrections, save_corrections
    from ditcache.compiler.runtime.runner import plan_for
    from ditcache.graphs.schedule import load_schedule

    spec, model, info = _load(args)
    schedule = load_schedule(args.schedule)
    if schedule.kind != "block-cache":
        raise ValueError(f"scale/shift correction applies to block-cache schedules, {args.schedule} is {schedule.kind}")
    plan = plan_for(schedule, spec)
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
    source = yaml.safe_load(Path(args.schedule).read_text())
    if "curves" in source:
        source["curves"] = str((Path(args.schedule).parent / source["curves"]).resolve())
    source["scale_shift"] = str(out.resolve())
    target = Path(args.schedule_out or Path(args.schedule).with_name(Path(args.schedule).stem + "-corrected.yaml"))
    target.write_text(f"# {args.schedule} with {how} scale/shift fitted on {len(request.class_labels)} images\n"
                      + yaml.safe_dump(source, sort_keys=False))
    print(f"fitted scale/shift for {len(plan.ranges)} replayed blocks over {plan.num_steps} steps on "
          f"{len(request.class_labels)} images; wrote {out} and {target}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ditcache.sharded import generate_from_args

    return generate_from_args(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from ditcache.demo import run_demo

    return run_demo(args)


def _add_export_args(p: argparse.ArgumentParser) -> None:
    from ditcache.compiler.backend import GRANULARITIES, PRECISIONS, backend_names

    _add_model_args(p)
    p.add_argument("--schedule", required=True, help="schedule.yaml")
    p.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="(default: %(default)s)")
    p.add_argument("--out", required=True, help="engine directory to write (resumable; unchanged graphs are reused)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--batch-size", type=int, default=1, help="images per call (the model batch doubles under CFG)")
    p.add_argument("--no-guidance", action="store_true", help="export for sampling without classifier-free guidance "
                                                             "(the default for models sampled without it: LCM)")
    p.add_argument("--guidance-batch", action="store_true",
                   help="export for classifier-free guidance even where the model's default sampling has none")
    p.add_argument("--resolution", type=int, help="image resolution in pixels (default: the model's)")
    p.add_argument("--granularity", choices=GRANULARITIES,
                   help="one graph per variant, or per segment shared by all variants (default: segment for "
                        "tensorrt, variant otherwise)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend option, e.g. provider=cuda (onnxruntime), cuda_graphs=true (inductor)")
    p.add_argument("--no-validate", action="store_true", help="skip the check of every graph against eager")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def export_engines_main(argv: list[str] | None = None) -> int:
    """The ``export-engines`` alias: ``ditcache export-engines``."""
    return main(["export-engines", *(sys.argv[1:] if argv is None else argv)])


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
    _add_text_args(p)
    p.add_argument("--schedule", help="schedule.yaml (default: full)")
    p.add_argument("--steps", type=int, help="steps of the full schedule when no --schedule is given (default 50)")
    p.add_argument("--vae", help="local diffusers VAE folder, to decode latent models to PNG")
    p.add_argument("--out", default="samples", help="output folder (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export-engines", help="compile every variant of a schedule and write an engine directory",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_export_args(p)
    p.set_defaults(func=cmd_export_engines)

    p = sub.add_parser("run", help="the compiled runner: sample from an engine directory",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", required=True, help="engine directory written by export-engines")
    p.add_argument("--schedule", help="check that the engines were built for this schedule")
    p.add_argument("--weights", help="model weights (inductor/eager engines compile from them; checked by sha256)")
    p.add_argument("--device", help="override the device the engines were built for")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up")
    p.add_argument("--vae", help="local diffusers VAE folder, to decode latent models to PNG")
    p.add_argument("--out", default="samples", help="output folder (default: %(default)s)")
    _add_sampling_args(p)
    _add_text_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("calibrate", help="measure per-block change curves (block caching)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_sampling_args(p)
    p.set_defaults(seed=None)
    p.add_argument("--steps", type=int, default=20, help="sampling steps (the schedule must use the same)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one full sampling run per seed")
    p.add_argument("--out", default="curves.json", help="curves file (default: %(default)s)")
    p.add_argument("--plot", help="PNG with the heatmap and per-block curves")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("auto-schedule", help="block-cache schedule.yaml from curves and a threshold or target",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", required=True, help="curves file from `ditcache calibrate`")
    p.add_argument("--threshold", type=float, help="δ: recompute when the accumulated change would exceed it")
    p.add_argument("--target-speedup", type=float, help="solve δ for this theoretical speedup (MACs)")
    p.add_argument("--cache", default="offset", choices=("offset", "output"), help="residual or output replay")
    p.add_argument("--model", default="dit-fmnist", help="model for MACs when the curves do not name one")
    p.add_argument("--out", default="schedule.yaml")
    p.set_defaults(func=cmd_auto_schedule)

    p = sub.add_parser("fit-correction", help="fit block caching's per-channel scale/shift (closed form or trained)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p)
    _add_sampling_args(p)
    p.add_argument("--schedule", required=True, help="block-cache schedule.yaml to correct")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="noise seeds per class")
    p.add_argument("--out", default="corrections.safetensors")
    p.add_argument("--schedule-out", help="corrected schedule (default: <schedule>-corrected.yaml)")
    p.add_argument("--method", default="closed-form", choices=("closed-form", "trained"),
                   help="closed-form: per-block least squares on the block outputs (training-free); trained: the "
                        "paper's short distillation of the denoiser output onto the full model's (default: %(default)s)")
    p.add_argument("--init", default="closed-form", choices=("closed-form", "identity"),
                   help="trained: starting point (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=30, help="trained: sampling runs, one Adam step each")
    p.add_argument("--lr", type=float, default=5e-3, help="trained: Adam learning rate (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit_correction)

    from ditcache.sharded import GENERATE_EXAMPLES, add_generate_args

    p = sub.add_parser("generate", help="many samples, sharded over torchrun ranks, resumable, as one .npz",
                       epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the main job: full vs cached sampling on the shipped model",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per schedule after one warm-up")
    p.add_argument("--weights", help="other dit-fmnist weights than the shipped ones")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "inductor", "eager"),
                   help="backend of the compiled Δ-DiT engines (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, RuntimeError) as exc:
        print(f"ditcache {args.command}: error: {exc}", file=sys.stderr)
        return 2
