"""The ``ditcache`` argument parser: one subcommand per command module."""

from __future__ import annotations

import argparse

from . import calibration, demo, export, generate, plan, sample

DESCRIPTION = """The ``ditcache`` command: show-plan, sample, export-engines, run, calibrate, auto-schedule,
fit-correction, generate, demo."""

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


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each parsed namespace carries its handler as ``func``."""
    parser = argparse.ArgumentParser(prog="ditcache", description=DESCRIPTION,
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    plan.register(sub, EXAMPLES)
    sample.register_sample(sub, EXAMPLES)
    export.register(sub, EXAMPLES)
    sample.register_run(sub, EXAMPLES)
    calibration.register(sub, EXAMPLES)  # calibrate, auto-schedule, fit-correction
    generate.register(sub)
    demo.register(sub, EXAMPLES)
    return parser
