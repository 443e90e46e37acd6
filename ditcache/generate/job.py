"""One rank's part of ``generate``: load, agree on the arguments, sample this rank's chunks, rank 0 merges."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ditcache.compiler.runtime.seeds import SEED_RULE

from .chunks import assign, num_chunks
from .config import GenerateConfig
from .decoder import ImageDecoder
from .distributed import Dist, setup_distributed
from .files import tmp_name, write_json
from .merge import merge
from .output import SUMMARY_FILE, prepare_output
from .runner import load_runner, sample_chunk
from .shards import FORMAT_VERSION, SHARD_DIR, shard_path, write_shard
from .summary import reference_throughput, summary, summary_text


def args_hash(identity: dict[str, Any]) -> str:
    """sha256 of the run's identity (run.json's ``args``): shards of another identity are never reused."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def generate(cfg: GenerateConfig, stdout=None, stderr=None) -> int:
    """Run ``generate`` on this rank (joins torchrun's group when there is one); returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if cfg.num_samples <= 0:
        raise ValueError(f"--num-samples must be positive (got {cfg.num_samples})")
    if cfg.chunk_size is not None and cfg.chunk_size <= 0:
        raise ValueError(f"--chunk-size must be positive (got {cfg.chunk_size})")
    reference, reference_source = reference_throughput(cfg.reference_throughput)
    job = setup_distributed(cfg.device)
    try:
        code = _generate(cfg, job, reference, reference_source, stdout, stderr)
        # rank 0's broadcast returns before the others have received it; one CI run (2026-11-23) saw rank 1 abort
        # in gloo ("terminate called without an active exception") as the ranks tore down: no rank leaves the
        # group before every rank is done with the last collective
        job.barrier()
        return code
    finally:
        job.close()


def _generate(cfg: GenerateConfig, job: Dist, reference, reference_source, stdout, stderr) -> int:
    import torch

    prefix = f"[rank {job.rank}/{job.world}]"

    def log(message: str) -> None:
        print(f"{prefix} {message}", file=stderr, flush=True)

    start = time.perf_counter()
    runner = load_runner(cfg, job)
    spec = runner.spec
    classes = cfg.classes if cfg.classes is not None else tuple(range(spec.num_classes))
    bad = [c for c in classes if not 0 <= c < spec.num_classes]
    if bad:
        raise ValueError(f"class {bad[0]} is outside {spec.name}'s classes 0..{spec.num_classes - 1}")
    device = job.device
    decoder = ImageDecoder(spec, cfg.vae, "cpu" if device == "cpu" else (f"cuda:{job.local_rank}"
                                                                          if device == "cuda" else device))
    identity = {
        "format": FORMAT_VERSION, "model": spec.name, "resolution": spec.image_size, **runner.identity,
        "steps": runner.steps, "scheduler": cfg.scheduler, "guidance": cfg.guidance, "seed": cfg.seed,
        "seed_rule": SEED_RULE, "num_samples": cfg.num_samples,
        "chunk_size": runner.chunk_size, "classes": list(cfg.classes) if cfg.classes is not None else "balanced",
        "output": "uint8" if decoder.images else "latents",
        "vae": str(Path(cfg.vae).resolve()) if cfg.vae and spec.latent else None, "device": device.split(":")[0],
    }
    run_hash = args_hash(identity)
    load_seconds = time.perf_counter() - start
    hashes = job.gather(run_hash)
    if len(set(hashes)) != 1:
        raise ValueError(f"ranks disagree on the arguments/weights (hashes {sorted(set(h[:12] for h in hashes))}); "
                         f"give every node the same command and files")
    out = Path(cfg.out)
    total = num_chunks(cfg.num_samples, runner.chunk_size)

    # rank 0 checks the folder and decides what is missing; every rank gets the same answer
    verdict: Any = None
    if job.rank == 0:
        for warning in runner.warnings:
            print(warning, file=stderr, flush=True)
        try:
            missing, valid = prepare_output(out, identity, run_hash, total, runner.chunk_size, cfg.num_samples,
                                            cfg.overwrite, log)
            verdict = ("ok", missing, valid)
        except (ValueError, OSError) as exc:
            verdict = ("error", f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc), 0)
    verdict = job.broadcast(verdict)
    if verdict[0] == "error":
        raise ValueError(verdict[1])
    _, missing, valid = verdict
    mine = assign(missing, job.rank, job.world)
    if job.rank == 0 and not cfg.quiet:
        log(f"{total} chunks of {runner.chunk_size} ({cfg.num_samples} samples): {valid} done, {len(missing)} to "
            f"compute on {job.world} rank(s)")

    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)  # not shared across nodes? the merge says so
    loop_start = time.perf_counter()
    computed, images, compute_seconds = [], 0, 0.0
    for k, chunk in enumerate(mine):
        t0 = time.perf_counter()
        indices, labels, samples = sample_chunk(runner, decoder, cfg, classes, chunk, device)
        seconds = time.perf_counter() - t0
        path = shard_path(out, chunk)
        if cfg.crash_after is not None and len(computed) >= cfg.crash_after:
            # testing: die mid-write, leaving a half-written tmp file behind
            with open(tmp_name(path), "wb") as f:
                f.write(b"PK\x03\x04 half-written")
            log(f"simulated crash after {len(computed)} chunks")
            stdout.flush()
            stderr.flush()
            os._exit(17)
        write_shard(path, chunk, run_hash, indices, labels, samples,
                    {"rank": job.rank, "world": job.world, "seconds": round(seconds, 6)})
        computed.append(chunk)
        images += len(indices)
        compute_seconds += seconds
        if not cfg.quiet:
            log(f"chunk {chunk} (samples {indices[0]}..{indices[-1]}): {len(indices) / seconds:.2f} img/s; "
                f"{k + 1}/{len(mine)} of this rank's chunks")
    loop_seconds = time.perf_counter() - loop_start
    stats = {"rank": job.rank, "chunks": computed, "images": images, "compute_s": compute_seconds,
             "loop_s": loop_seconds, "load_s": load_seconds, "threads": torch.get_num_threads(),
             "throughput": images / compute_seconds if compute_seconds else None}
    everyone = job.gather(stats)  # also the barrier before the merge

    result: Any = None
    if job.rank == 0:
        try:
            final = merge(out, spec, decoder.images, run_hash, total, runner.chunk_size, cfg.num_samples)
            record = summary(cfg, job, everyone, valid, total, final, decoder.images, reference, reference_source,
                             run_hash)
            write_json(out / SUMMARY_FILE, record)
            result = ("ok", record)
        except (RuntimeError, OSError) as exc:
            result = ("error", str(exc))
    result = job.broadcast(result)
    if result[0] == "error":
        raise RuntimeError(result[1])
    if job.rank == 0:
        record = result[1]
        if cfg.json:
            print(json.dumps(record, indent=2), file=stdout, flush=True)
        else:
            print(summary_text(record), file=stdout, flush=True)
    return 0
