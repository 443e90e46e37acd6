"""``ditcache demo``: the main job, full vs cached sampling on the shipped model (the work: ditcache/demo.py)."""

from __future__ import annotations

import argparse

from .arguments import output_folder, positive_int, seed


def cmd_demo(args: argparse.Namespace) -> int:
    from ditcache.demo import run_demo

    return run_demo(args)


def register(sub, epilog: str) -> None:
    """The ``demo`` subcommand."""
    p = sub.add_parser("demo", help="the main job: full vs cached sampling on the shipped model",
                       epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=output_folder, default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per schedule after one warm-up")
    p.add_argument("--weights", help="other dit-fmnist weights than the shipped ones")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "inductor", "eager"),
                   help="backend of the compiled Δ-DiT engines (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
