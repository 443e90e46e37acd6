"""``ditcache generate``: its arguments and the :class:`GenerateConfig` they make (the work: ditcache/generate/)."""

from __future__ import annotations

import argparse

from .arguments import existing_folder, guidance_scale, nonnegative_int, output_folder, positive_int, seed

GENERATE_EXAMPLES = """examples:
  ditcache generate --model dit-fmnist --steps 20 --num-samples 1000 --out gen/
  torchrun --standalone --nproc-per-node 8 -m ditcache generate --model dit-xl --weights DiT-XL-2-256x256.pt \\
      --vae sd-vae-ft-ema --schedule schedules/dit-xl-delta-20.yaml --num-samples 50000 --chunk-size 32 --out fid50k/
  ditcache generate --engines engines/ --num-samples 1000 --out gen/      # compiled runner; chunk = engine batch
Re-running the same command resumes: only missing or corrupt chunks are recomputed.
"""


def add_generate_args(p: argparse.ArgumentParser) -> None:
    """The ``generate`` subcommand's arguments."""
    from ditcache.compiler.runtime.sampling import SCHEDULERS
    from ditcache.generate import DEFAULT_CHUNK_SIZE
    from ditcache.graphs.registry import MODELS

    p.add_argument("--num-samples", type=positive_int, required=True, help="N: samples 0..N-1")
    p.add_argument("--out", type=output_folder, required=True, help="output folder, shared by all nodes (resumable)")
    p.add_argument("--model", choices=list(MODELS), help="registry model (default: dit-fmnist; not with --engines)")
    p.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (local paths only)")
    p.add_argument("--random-weights", action="store_true",
                   help="random initialisation: timing only, images are noise")
    p.add_argument("--engines", help="engine directory from export-engines: sample with the compiled runner")
    p.add_argument("--schedule", help="schedule.yaml (default: full; with --engines: checked against the engines)")
    p.add_argument("--steps", type=positive_int,
                   help="steps of the full schedule when no --schedule is given (default 50)")
    p.add_argument("--classes", type=nonnegative_int, nargs="+",
                   help="class list cycled over the samples (default: all classes, balanced: class of i = "
                        "i mod num_classes)")
    p.add_argument("--seed", type=seed, default=0, help="global seed; each sample's noise depends on it and its index")
    p.add_argument("--chunk-size", type=positive_int,
                   help=f"images per batch, aligned on the global index (default {DEFAULT_CHUNK_SIZE}; "
                        "with --engines: the engines' batch)")
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULERS, help="sampler (default: %(default)s)")
    p.add_argument("--guidance", type=guidance_scale, default=4.0,
                   help="classifier-free guidance scale; <= 1 disables it")
    p.add_argument("--vae", type=existing_folder, help="local diffusers VAE folder, to decode latent models to images")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA (GPU = LOCAL_RANK) when available (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of an earlier run with other arguments")
    p.add_argument("--reference-throughput", metavar="IMG_S|SUMMARY_JSON",
                   help="one-rank images/s, or a one-rank run's summary.json, for the scaling efficiency")
    p.add_argument("--quiet", action="store_true", help="no per-chunk progress lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--crash-after-chunks", dest="crash_after", type=nonnegative_int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace):
    """The :class:`~ditcache.generate.GenerateConfig` of parsed ``generate`` arguments."""
    from ditcache.generate import GenerateConfig

    return GenerateConfig(
        num_samples=args.num_samples, out=args.out, model=args.model, weights=args.weights,
        random_weights=args.random_weights, engines=args.engines, schedule=args.schedule, steps=args.steps,
        classes=tuple(args.classes) if args.classes is not None else None, seed=args.seed,
        chunk_size=args.chunk_size, scheduler=args.scheduler, guidance=args.guidance, vae=args.vae,
        device=args.device, overwrite=args.overwrite, reference_throughput=args.reference_throughput,
        quiet=args.quiet, json=args.json, crash_after=args.crash_after,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from ditcache.generate import generate

    return generate(config_from_args(args))


def register(sub) -> None:
    """The ``generate`` subcommand."""
    p = sub.add_parser("generate", help="many samples, sharded over torchrun ranks, resumable, as one .npz",
                       epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_args(p)
    p.set_defaults(func=cmd_generate, exit_without_teardown=True)  # see cli.main: gloo's teardown
