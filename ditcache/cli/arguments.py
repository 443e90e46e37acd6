"""Argument types and the argument groups several commands share; bad values are refused at parse time."""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed and numpy's SeedSequence both take it


def _whole_number(text: str, minimum: int, hint: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}; {hint}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}; {hint}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole_number(text, 1, "give a whole number of at least 1")


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole_number(text, 0, "give a whole number of at least 0")


def seed(text: str) -> int:
    """argparse type: a noise seed, 0 <= seed < 2**63."""
    value = _whole_number(text, 0, "give a seed from 0 to 2**63 - 1")
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be below 2**63, got {value}; give a seed from 0 to 2**63 - 1")
    return value


def _finite(text: str, hint: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}; {hint}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}; {hint}")
    return value


def number_at_least(minimum: float, hint: str, strict: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number >= ``minimum`` (> with ``strict``); ``hint`` says what to give instead."""
    def parse(text: str) -> float:
        value = _finite(text, hint)
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'above' if strict else 'at least'} {minimum:g}, got {value:g}; "
                                             f"{hint}")
        return value

    parse.__name__ = "number"  # argparse names the type in its "invalid number value" fallback
    return parse


guidance_scale = number_at_least(0.0, "give a guidance scale such as 4.0 (<= 1 disables guidance)")


def _writable_folder(folder: Path) -> str:
    """Why files cannot be created in the existing ``folder`` ("" when they can): os.access and a probe write
    (os.access says yes to root whatever the mode; the probe catches read-only mounts too)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} is not writable"
    try:
        fd, probe = tempfile.mkstemp(prefix=".ditcache-probe-", dir=folder)
    except OSError as exc:
        return f"cannot create files in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return ""


def _creatable_folder(path: Path) -> str:
    """Why ``path`` cannot be (or become) a folder files are written to ("" when it can)."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        return _writable_folder(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, so the folder {path} cannot be created"
    return _writable_folder(ancestor)


def output_folder(text: str) -> str:
    """argparse type: a folder to write in (created when missing): not a file, and writable."""
    problem = _creatable_folder(Path(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}; give a folder you can write to (it is created if missing)")
    return text


def output_file(text: str) -> str:
    """argparse type: a file to write (replaced when it exists): not a folder, in a writable folder."""
    path = Path(text)
    problem = f"{path} is a folder, not a file" if path.is_dir() else _creatable_folder(path.parent)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}; give a file path in a folder you can write to")
    return text


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """Raise ValueError naming ``what`` unless ``path`` can be written (for paths no flag names directly)."""
    try:
        output_file(str(path))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{what}: {exc}") from None


def existing_folder(text: str) -> str:
    """argparse type: a folder that exists (read before any work)."""
    if not Path(text).is_dir():
        what = "is a file, not a folder" if Path(text).exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}; give a local folder")
    return text


def existing_file(text: str) -> str:
    """argparse type: a file that exists (read before any work)."""
    if not Path(text).is_file():
        what = "is a folder, not a file" if Path(text).exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}; give an existing file")
    return text


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """--model, --weights, --random-weights."""
    from ditcache.graphs.registry import MODELS

    parser.add_argument("--model", default="dit-fmnist", choices=list(MODELS),
                        help="registry model (default: %(default)s)")
    parser.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (local paths only)")
    parser.add_argument("--random-weights", action="store_true",
                        help="random initialisation: timing only, images are noise")


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """--scheduler, --guidance, --seed, --classes."""
    from ditcache.compiler.runtime.sampling import SCHEDULERS

    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help="sampler (default: the model's: ddim for DiT, dpm++ for PixArt-α, lcm for PixArt-α-LCM)")
    parser.add_argument("--guidance", type=guidance_scale,
                        help="classifier-free guidance scale; <= 1 disables it (default: the model's: 4.0 for DiT, "
                             "4.5 for PixArt-α, none for LCM)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--classes", type=nonnegative_int, nargs="+", help="one class label per image (default: 0..9)")


def add_text_args(parser: argparse.ArgumentParser) -> None:
    """--embeddings, --text-encoder, --prompt, --negative-prompt (text-conditioned models)."""
    parser.add_argument("--embeddings", type=existing_file,
                        help="text-conditioned models: safetensors file with prompt_embeds, prompt_attention_mask, "
                             "negative_prompt_embeds, negative_prompt_attention_mask")
    parser.add_argument("--text-encoder", type=existing_folder,
                        help="text-conditioned models: local T5 folder (or pipeline folder with text_encoder/ and "
                             "tokenizer/) to encode --prompt with")
    parser.add_argument("--prompt", nargs="+", help="one prompt per image (with --text-encoder)")
    parser.add_argument("--negative-prompt", default="", help="prompt guidance steers away from (default: empty)")
