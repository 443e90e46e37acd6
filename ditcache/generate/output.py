"""Rank 0's check of the output folder: run.json against the arguments, corrupt and half-written shards dropped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .chunks import chunk_range
from .files import TMP_GLOB, write_json
from .shards import FORMAT_VERSION, SHARD_DIR, read_shard, shard_path

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"


def final_name(spec, images: bool, n: int) -> str:
    """The merged file: ``samples_NxHxWxC.npz`` (uint8 images) or ``latents_NxCxHxW.npz``."""
    if images:
        size = spec.image_size
        return f"samples_{n}x{size}x{size}x{spec.in_channels if not spec.latent else 3}.npz"
    return f"latents_{n}x{spec.in_channels}x{spec.sample_size}x{spec.sample_size}.npz"


def _owned_files(out: Path) -> list[Path]:
    return [out / RUN_FILE, out / SUMMARY_FILE, *out.glob("samples_*.npz"), *out.glob("latents_*.npz")]


def prepare_output(out: Path, identity: dict, run_hash: str, total_chunks: int, chunk_size: int, n: int,
                   overwrite: bool, log: Callable[[str], None]) -> tuple[list[int], int]:
    """Check ``out`` against the arguments, drop corrupt/half-written shards; (missing chunks, valid chunks)."""
    out.mkdir(parents=True, exist_ok=True)
    shards = out / SHARD_DIR
    run_file = out / RUN_FILE
    if overwrite:
        if shards.exists():
            shutil.rmtree(shards)
        for path in _owned_files(out):
            if path.exists():
                path.unlink()
    if run_file.exists():
        try:
            recorded = json.loads(run_file.read_text())
        except ValueError:
            recorded = {"args_hash": None, "args": {}}
        if recorded.get("args_hash") != run_hash:
            old = recorded.get("args", {})
            diff = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {identity.get(k)!r}" for k in diff[:6]) or "unreadable run.json"
            raise ValueError(f"{out} holds samples of a generate run with other arguments ({detail}); "
                             f"use another --out, or --overwrite to discard them")
    elif shards.exists() and any(shards.iterdir()):
        raise ValueError(f"{shards} holds shards but {run_file} is missing, so their arguments are unknown; "
                         f"use another --out, or --overwrite to discard them")
    shards.mkdir(exist_ok=True)
    if not run_file.exists():
        write_json(run_file, {"format": FORMAT_VERSION, "args_hash": run_hash, "args": identity})
    ours = ("samples_", "latents_", RUN_FILE, SUMMARY_FILE)
    for tmp in [*shards.glob(TMP_GLOB), *(t for t in out.glob(TMP_GLOB) if t.name.startswith(ours))]:
        log(f"removing half-written {tmp.name}")  # left by a killed run: never taken for a finished file
        tmp.unlink()
    missing, valid = [], 0
    for chunk in range(total_chunks):
        path = shard_path(out, chunk)
        if not path.exists():
            missing.append(chunk)
            continue
        arrays, why = read_shard(path, chunk, run_hash, chunk_range(chunk, chunk_size, n))
        if arrays is None:
            log(f"{path.name}: {why}; recomputing chunk {chunk}")
            path.unlink()
            missing.append(chunk)
        else:
            valid += 1
    known = {shard_path(out, c).name for c in range(total_chunks)}
    for stray in shards.glob("chunk-*.npz"):
        if stray.name not in known:
            raise ValueError(f"{stray} is not a chunk of this run (N={n}, chunk size {chunk_size}); "
                             f"use another --out, or --overwrite")
    return missing, valid
