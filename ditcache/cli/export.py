"""``ditcache export-engines``: compile every variant of a schedule into an engine directory."""

from __future__ import annotations

import argparse
import json
import sys

from .arguments import add_model_args, output_folder, positive_int


def options(pairs: list[str] | None) -> dict:
    """--option KEY=VALUE pairs as a dict (numbers, lists, objects and booleans parsed as JSON)."""
    parsed = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--option takes KEY=VALUE (got {pair!r})")
        key, value = pair.split("=", 1)
        parsed[key] = json.loads(value) if value[:1] in "[{0123456789-" or value in ("true", "false") else value
    return parsed


def export_guidance(args: argparse.Namespace) -> bool:
    """Whether engines are built for guidance (a doubled batch): yes unless --no-guidance or the model samples
    without a guidance batch by default (PixArt-α-LCM; FLUX, whose scale is a model input); --guidance-batch
    forces it."""
    from ditcache.graphs.registry import get_spec

    if args.no_guidance:
        return False
    spec = get_spec(args.model)
    return bool(args.guidance_batch) or spec.cfg_batch(spec.guidance_scale)


def cmd_export_engines(args: argparse.Namespace) -> int:
    from ditcache.export.export_engines import ExportRequest, export_engines

    request = ExportRequest(
        model=args.model, schedule=args.schedule, out=args.out, backend=args.backend, weights=args.weights,
        random_weights=args.random_weights, precision=args.precision, batch_size=args.batch_size,
        guidance=export_guidance(args), resolution=args.resolution, frames=args.frames, granularity=args.granularity,
        device=args.device, options=options(args.option), validate=not args.no_validate,
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


def add_export_args(p: argparse.ArgumentParser) -> None:
    """The ``export-engines`` arguments."""
    from ditcache.compiler.backend import GRANULARITIES, PRECISIONS, backend_names

    add_model_args(p)
    p.add_argument("--schedule", required=True, help="schedule.yaml")
    p.add_argument("--backend", default="onnxruntime", choices=backend_names(), help="(default: %(default)s)")
    p.add_argument("--out", type=output_folder, required=True,
                   help="engine directory to write (resumable; unchanged graphs are reused)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--batch-size", type=positive_int, default=1,
                   help="images per call (the model batch doubles under CFG)")
    p.add_argument("--no-guidance", action="store_true", help="export for sampling without classifier-free guidance "
                                                             "(the default for models sampled without it: LCM)")
    p.add_argument("--guidance-batch", action="store_true",
                   help="export for classifier-free guidance even where the model's default sampling has none")
    p.add_argument("--resolution", type=positive_int, help="image resolution in pixels (default: the model's)")
    p.add_argument("--frames", type=positive_int, help="video models (Wan): frames per clip, 4k + 1 (default: the "
                                                        "model's)")
    p.add_argument("--granularity", choices=GRANULARITIES,
                   help="one graph per variant, or per segment shared by all variants (default: segment for "
                        "tensorrt, variant otherwise)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="backend option, e.g. provider=cuda (onnxruntime), cuda_graphs=true (inductor)")
    p.add_argument("--no-validate", action="store_true", help="skip the check of every graph against eager")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub, epilog: str) -> None:
    """The ``export-engines`` subcommand."""
    p = sub.add_parser("export-engines", help="compile every variant of a schedule and write an engine directory",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_export_args(p)
    p.set_defaults(func=cmd_export_engines)
