"""``ditcache generate``: many samples on one or many processes (torchrun), sharded, resumable, bit-stable.

How it works:

* The N sample indices are cut into fixed chunks aligned on the global index: chunk ``c`` is indices
  ``[c*B, (c+1)*B)`` (the last one shorter). A chunk is always sampled as one batch, so its numbers do not
  depend on which process computes it or on how many there are (BLAS results depend on the batch).
* Sample ``i`` gets class ``classes[i % len(classes)]`` (default: all classes, balanced) and its own noise
  seed, derived from the global ``--seed`` and ``i`` only (:func:`sample_seed`) — never from the rank.
* Rank 0 checks the output folder (``run.json`` records the arguments and their hash), validates every
  finished shard (checksum, indices, hash), drops corrupt and half-written ones, and broadcasts the list
  of missing chunks; every rank takes ``missing[rank::world]`` (round-robin), samples them and writes one
  shard per chunk atomically (tmp file, fsync, ``os.replace``).
* After all ranks are done, rank 0 checks that every index 0..N-1 is present exactly once and streams the
  shards into the standard sample batch ``samples_NxHxWxC.npz`` (``arr_0``: uint8 N×H×W×C, ``arr_1``: class
  labels; what guided-diffusion's / DiT's FID evaluator reads), written atomically and byte-deterministic.
  Latent models without ``--vae`` store latents and get ``latents_NxCxHxW.npz`` (float32) instead.

Without torchrun it runs as one process with no process group. Under torchrun the process group uses
gloo on CPU and nccl on CUDA (one GPU per local rank). The output folder must be shared by all nodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

FORMAT_VERSION = 1
SHARD_DIR = "shards"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
DEFAULT_CHUNK_SIZE = 16
DIST_TIMEOUT = timedelta(hours=2)  # the final gather waits for the slowest rank
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the merged .npz is byte-deterministic

GENERATE_EXAMPLES = """examples:
  ditcache generate --model dit-fmnist --steps 20 --num-samples 1000 --out gen/
  torchrun --standalone --nproc-per-node 8 -m ditcache generate --model dit-xl --weights DiT-XL-2-256x256.pt \\
      --vae sd-vae-ft-ema --schedule schedules/dit-xl-delta-20.yaml --num-samples 50000 --chunk-size 32 --out fid50k/
  ditcache generate --engines engines/ --num-samples 1000 --out gen/      # compiled runner; chunk = engine batch
Re-running the same command resumes: only missing or corrupt chunks are recomputed.
"""


# ---- pure helpers --------------------------------------------------------------------------------------
def sample_seed(seed: int, index: int) -> int:
    """The noise seed of sample ``index`` under global ``seed`` (63 bits of sha256; independent of sharding)."""
    digest = hashlib.sha256(f"ditcache-sample:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def class_for(index: int, classes: Sequence[int]) -> int:
    """Class of sample ``index``: the class list, cycled."""
    return int(classes[index % len(classes)])


def num_chunks(num_samples: int, chunk_size: int) -> int:
    return -(-num_samples // chunk_size)


def chunk_range(chunk: int, chunk_size: int, num_samples: int) -> range:
    """Global indices of ``chunk``: ``[c*B, min((c+1)*B, N))``."""
    return range(chunk * chunk_size, min((chunk + 1) * chunk_size, num_samples))


def assign(chunks: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``chunks``: whole chunks, round-robin."""
    return list(chunks[rank::world])


def args_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None], tmp_tag: str = "") -> None:
    """``write(file)`` to ``path.tmp-…``, fsync, ``os.replace`` onto ``path``, fsync the folder."""
    tmp = path.with_name(f"{path.name}.tmp-{tmp_tag or os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda f: f.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode()))


# ---- shards --------------------------------------------------------------------------------------------
def shard_path(out: Path, chunk: int) -> Path:
    return out / SHARD_DIR / f"chunk-{chunk:06d}.npz"


def _payload_sha256(indices: np.ndarray, labels: np.ndarray, samples: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in (indices, labels, samples):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_shard(path: Path, chunk: int, run_hash: str, indices: np.ndarray, labels: np.ndarray,
                samples: np.ndarray, extra: dict | None = None) -> None:
    """One chunk's samples with its indices, the run's arguments hash and a checksum, written atomically."""
    meta = {"format": FORMAT_VERSION, "chunk": chunk, "args_hash": run_hash,
            "sha256": _payload_sha256(indices, labels, samples), "shape": list(samples.shape),
            "dtype": samples.dtype.str, **(extra or {})}
    _atomic_write(path, lambda f: np.savez(f, indices=indices, labels=labels, samples=samples,
                                           meta=np.array(json.dumps(meta, sort_keys=True))))


def read_shard(path: Path, chunk: int, run_hash: str, expected: range, full: bool = True) -> tuple[dict | None, str]:
    """(arrays, "") for a complete, intact shard of ``chunk``; (None, why) otherwise.

    ``full=False`` reads only the indices and the metadata (no checksum: the caller checks it when it reads
    the samples).
    """
    keys = ("indices", "labels", "samples", "meta") if full else ("indices", "meta")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys}
        meta = json.loads(str(arrays["meta"]))
    except Exception as exc:  # truncated / corrupt zip, CRC error, missing member, bad json
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if meta.get("format") != FORMAT_VERSION or meta.get("chunk") != chunk:
        return None, f"holds chunk {meta.get('chunk')} (format {meta.get('format')}), not chunk {chunk}"
    if meta.get("args_hash") != run_hash:
        return None, "written by a run with other arguments"
    if not np.array_equal(arrays["indices"], np.arange(expected.start, expected.stop)):
        return None, f"indices are not {expected.start}..{expected.stop - 1}"
    if full:
        if list(arrays["samples"].shape) != meta.get("shape") or arrays["samples"].dtype.str != meta.get("dtype"):
            return None, "samples do not have the recorded shape/dtype"
        if _payload_sha256(arrays["indices"], arrays["labels"], arrays["samples"]) != meta.get("sha256"):
            return None, "checksum mismatch"
    arrays["meta"] = meta
    return arrays, ""


def _write_npz_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
                      parts: Callable[[], Any]) -> None:
    info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    with zf.open(info, "w", force_zip64=True) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for part in parts():
            f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


# ---- distributed ---------------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False
    device: str = "cpu"

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.group:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.group:
            return [obj]
        import torch.distributed as dist

        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, obj)
        return boxes

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op without a group)."""
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (after an error too, so no barrier here)."""
        if self.group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.group = False


def setup_distributed(device: str) -> Dist:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on CUDA); else a one-process job.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; on CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no GPU; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this node; "
                               f"use --nproc-per-node {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    job = Dist(rank, world, local_rank, False, device)
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local_rank)} if device == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT, **kwargs)
        job.rank, job.world, job.group = dist.get_rank(), dist.get_world_size(), True
    return job


# ---- configuration -------------------------------------------------------------------------------------
@dataclass
class GenerateConfig:
    """What ``generate`` does.

    Args:
        num_samples: N, indices 0..N-1.
        out: output folder (shared by all nodes); holds run.json, shards/, summary.json and the merged .npz.
        model, weights, random_weights: the eager model (as ``sample``), unless ``engines`` is given.
        engines: engine directory from export-engines (the compiled runner); chunk size = its batch.
        schedule, steps: schedule.yaml, or the full schedule with ``steps`` (default 50).
        classes: class list cycled over the indices (default: all classes, class of i = i % num_classes).
        seed: global seed; sample i's noise seed is :func:`sample_seed` (seed, i).
        chunk_size: B, images per batch (default 16, or the engines' batch).
        scheduler, guidance: sampler and classifier-free guidance.
        vae: local diffusers VAE for latent models (without one, latents are stored and no uint8 npz written).
        device: auto | cpu | cuda.
        overwrite: discard what ``out`` holds from an earlier run with other arguments.
        reference_throughput: one-rank images/s (number or a one-rank run's summary.json) for scaling efficiency.
        quiet: no per-chunk progress lines.
        json: print the summary as JSON.
        crash_after: testing only: exit abruptly after writing this many shards (leaving a half-written tmp file).
    """

    num_samples: int
    out: str
    model: str | None = None
    weights: str | None = None
    random_weights: bool = False
    engines: str | None = None
    schedule: str | None = None
    steps: int | None = None
    classes: tuple[int, ...] | None = None
    seed: int = 0
    chunk_size: int | None = None
    scheduler: str = "ddim"
    guidance: float = 4.0
    vae: str | None = None
    device: str = "auto"
    overwrite: bool = False
    reference_throughput: str | None = None
    quiet: bool = False
    json: bool = False
    crash_after: int | None = None


def add_generate_args(p: argparse.ArgumentParser) -> None:
    """The ``generate`` subcommand's arguments."""
    from ditcache.compiler.runtime.sampling import SCHEDULERS
    from ditcache.graphs.registry import MODELS

    p.add_argument("--num-samples", type=int, required=True, help="N: samples 0..N-1")
    p.add_argument("--out", required=True, help="output folder, shared by all nodes (resumable)")
    p.add_argument("--model", choices=list(MODELS), help="registry model (default: dit-fmnist; not with --engines)")
    p.add_argument("--weights", help="diffusers folder, official DiT .pt, or .safetensors (local paths only)")
    p.add_argument("--random-weights", action="store_true", help="random initialisation: timing only, images are noise")
    p.add_argument("--engines", help="engine directory from export-engines: sample with the compiled runner")
    p.add_argument("--schedule", help="schedule.yaml (default: full; with --engines: checked against the engines)")
    p.add_argument("--steps", type=int, help="steps of the full schedule when no --schedule is given (default 50)")
    p.add_argument("--classes", type=int, nargs="+",
                   help="class list cycled over the samples (default: all classes, balanced: class of i = i mod num_classes)")
    p.add_argument("--seed", type=int, default=0, help="global seed; each sample's noise depends on it and its index")
    p.add_argument("--chunk-size", type=int,
                   help=f"images per batch, aligned on the global index (default {DEFAULT_CHUNK_SIZE}; "
                        "with --engines: the engines' batch)")
    p.add_argument("--scheduler", default="ddim", choices=SCHEDULERS, help="sampler (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale; <= 1 disables it")
    p.add_argument("--vae", help="local diffusers VAE folder, to decode latent models to images")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: CUDA (GPU = LOCAL_RANK) when available (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of an earlier run with other arguments")
    p.add_argument("--reference-throughput", metavar="IMG_S|SUMMARY_JSON",
                   help="one-rank images/s, or a one-rank run's summary.json, for the scaling efficiency")
    p.add_argument("--quiet", action="store_true", help="no per-chunk progress lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--crash-after-chunks", dest="crash_after", type=int, help=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> GenerateConfig:
    return GenerateConfig(
        num_samples=args.num_samples, out=args.out, model=args.model, weights=args.weights,
        random_weights=args.random_weights, engines=args.engines, schedule=args.schedule, steps=args.steps,
        classes=tuple(args.classes) if args.classes is not None else None, seed=args.seed,
        chunk_size=args.chunk_size, scheduler=args.scheduler, guidance=args.guidance, vae=args.vae,
        device=args.device, overwrite=args.overwrite, reference_throughput=args.reference_throughput,
        quiet=args.quiet, json=args.json, crash_after=args.crash_after,
    )


# ---- the runner: model or engines, loaded once per rank ------------------------------------------------
@dataclass
class Runner:
    spec: Any
    dispatcher: Any
    steps: int
    chunk_size: int
    pad: bool  # engines have a fixed batch: the last chunk is padded with indices >= N (then dropped)
    identity: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def load_runner(cfg: GenerateConfig, job: Dist) -> Runner:
    import torch

    from ditcache.compiler.runtime.runner import eager_dispatcher, plan_for
    from ditcache.graphs.schedule import full_schedule, load_schedule

    schedule = load_schedule(cfg.schedule) if cfg.schedule else None
    if schedule is not None and cfg.steps is not None and cfg.steps != schedule.steps:
        raise ValueError(f"--steps {cfg.steps} contradicts the schedule's steps: {schedule.steps}; drop --steps")
    warnings = []
    if cfg.engines:
        from ditcache.export.load import load_engines

        if cfg.model is not None or cfg.random_weights:
            raise ValueError("--engines samples with the model the engines were built from; drop --model/--random-weights")
        from ditcache.export.manifest import Manifest

        manifest = Manifest.read(Path(cfg.engines))
        batch = manifest.batch["images"]
        if cfg.chunk_size is not None and cfg.chunk_size != batch:
            raise ValueError(f"the engines in {cfg.engines} sample {batch} images per call; use --chunk-size {batch} "
                             f"(or export with --batch-size {cfg.chunk_size})")
        check: dict[str, Any] = {"images": batch, "guidance": cfg.guidance > 1}
        if schedule is not None:
            check["schedule"] = schedule
        device = None if cfg.device == "auto" else cfg.device
        loaded = load_engines(cfg.engines, weights=cfg.weights, device=device, **check)
        if cfg.steps is not None and cfg.steps != loaded.plan.num_steps:
            raise ValueError(f"the engines run {loaded.plan.num_steps} steps; drop --steps or export for {cfg.steps}")
        job.device = device or loaded.manifest.backend["settings"]["device"]
        m = loaded.manifest
        identity = {"runner": "engines", "backend": m.backend["name"], "settings": m.backend["settings"],
                    "granularity": m.granularity, "weights_sha256": m.model["weights_sha256"],
                    "plan_hash": loaded.plan.hash()}
        return Runner(loaded.spec, loaded.dispatcher, loaded.plan.num_steps, batch, True, identity, warnings)

    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(cfg.model or "dit-fmnist")
    model, info = load_model(spec, cfg.weights, cfg.random_weights)
    if info.random:
        warnings.append(f"WARNING: {spec.name} has RANDOM weights ({info.source}): timings are real, images are noise")
    if job.device != "cpu":
        model = model.to(torch.device(job.device, job.local_rank) if job.device == "cuda" else job.device)
    schedule = schedule or full_schedule(cfg.steps or 50)
    plan = plan_for(schedule, spec)
    chunk = cfg.chunk_size or DEFAULT_CHUNK_SIZE
    identity = {"runner": "eager", "weights_sha256": info.sha256, "plan_hash": plan.hash()}
    return Runner(spec, eager_dispatcher(model, spec, plan), schedule.steps, chunk, False, identity, warnings)


class ImageDecoder:
    """Latents -> uint8 (B, H, W, C): pixel models directly, latent models through a VAE loaded once."""

    def __init__(self, spec, vae_path: str | None, device: str):
        self.spec, self.vae, self.device = spec, None, device
        if spec.latent and vae_path is not None:
            from diffusers import AutoencoderKL

            path = Path(vae_path)
            if (path / "vae").is_dir():
                path = path / "vae"
            self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().to(device)

    @property
    def images(self) -> bool:
        return not self.spec.latent or self.vae is not None

    def __call__(self, latents) -> np.ndarray:
        import torch

        from ditcache.images import decode, to_uint8

        if not self.spec.latent:
            return to_uint8(decode(latents, self.spec))
        if self.vae is None:
            return latents.float().cpu().numpy()
        with torch.no_grad():
            images = self.vae.decode(latents.float() / self.vae.config.scaling_factor).sample
        return to_uint8((images / 2 + 0.5).clamp(0, 1))


# ---- rank 0: the output folder ---------------------------------------------------------------------------
def _final_name(spec, images: bool, n: int) -> str:
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
        _write_json(run_file, {"format": FORMAT_VERSION, "args_hash": run_hash, "args": identity})
    ours = ("samples_", "latents_", RUN_FILE, SUMMARY_FILE)
    for tmp in [*shards.glob("*.tmp-*"), *(t for t in out.glob("*.tmp-*") if t.name.startswith(ours))]:
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


def merge(out: Path, spec, images: bool, run_hash: str, total_chunks: int, chunk_size: int, n: int) -> Path:
    """Check every index 0..N-1 is present exactly once and stream the shards into the final .npz atomically.

    Memory stays at one chunk: the first pass reads indices and metadata, the second streams samples and
    labels into the zip, checking each shard's checksum on the way (a mismatch aborts before the rename).
    """
    seen = np.zeros(n, dtype=np.int64)
    layouts = set()
    for chunk in range(total_chunks):
        path = shard_path(out, chunk)
        if not path.exists():
            raise RuntimeError(f"{path} is missing after all ranks finished (is --out on a filesystem shared by "
                               f"all nodes?); run the same command again to compute it")
        arrays, why = read_shard(path, chunk, run_hash, chunk_range(chunk, chunk_size, n), full=False)
        if arrays is None:
            raise RuntimeError(f"{path}: {why}; run the same command again to recompute it")
        np.add.at(seen, arrays["indices"], 1)
        layouts.add((tuple(arrays["meta"]["shape"][1:]), arrays["meta"]["dtype"]))
    if not (seen == 1).all():
        bad = np.flatnonzero(seen != 1)
        raise RuntimeError(f"index {bad[0]} is present {seen[bad[0]]} times ({len(bad)} indices not exactly once)")
    if len(layouts) != 1:
        raise RuntimeError(f"shards disagree on sample shape/dtype: {sorted(map(str, layouts))}")
    (item_shape, dtype), = layouts
    final = out / _final_name(spec, images, n)
    labels: list[np.ndarray] = []

    def samples():
        for chunk in range(total_chunks):
            path = shard_path(out, chunk)
            arrays, why = read_shard(path, chunk, run_hash, chunk_range(chunk, chunk_size, n))
            if arrays is None:
                raise RuntimeError(f"{path}: {why}; run the same command again to recompute it")
            labels.append(arrays["labels"])
            yield arrays["samples"]

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_npz_member(zf, "arr_0", np.dtype(dtype), (n, *item_shape), samples)
            _write_npz_member(zf, "arr_1", np.dtype(np.int64), (n,), lambda: labels)

    _atomic_write(final, write)
    return final


# ---- per-rank work -----------------------------------------------------------------------------------
def _sample_chunk(runner: Runner, decoder: ImageDecoder, cfg: GenerateConfig, classes: Sequence[int],
                  chunk: int, device: str):
    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest

    indices = chunk_range(chunk, runner.chunk_size, cfg.num_samples)
    batch = range(indices.start, indices.start + runner.chunk_size) if runner.pad else indices
    request = SampleRequest(tuple(class_for(i, classes) for i in batch), runner.steps, cfg.guidance, cfg.seed,
                            cfg.scheduler, sample_seeds=tuple(sample_seed(cfg.seed, i) for i in batch))
    latents = sample_with_plan(runner.dispatcher, runner.spec, request, device=device)
    samples = decoder(latents)[: len(indices)]
    labels = np.asarray(request.class_labels[: len(indices)], dtype=np.int64)
    return np.arange(indices.start, indices.stop, dtype=np.int64), labels, np.ascontiguousarray(samples)


def _reference(value: str | None) -> tuple[float | None, str | None]:
    if value is None:
        return None, None
    try:
        return float(value), "given"
    except ValueError:
        pass
    data = json.loads(Path(value).read_text())
    if data.get("world_size") != 1 or not data.get("throughput"):
        raise ValueError(f"{value} is not the summary of a one-rank run with computed chunks; give images/s instead")
    return float(data["throughput"]), value


def generate(cfg: GenerateConfig, stdout=None, stderr=None) -> int:
    """Run ``generate`` on this rank (joins torchrun's group when there is one); returns the exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if cfg.num_samples <= 0:
        raise ValueError(f"--num-samples must be positive (got {cfg.num_samples})")
    if cfg.chunk_size is not None and cfg.chunk_size <= 0:
        raise ValueError(f"--chunk-size must be positive (got {cfg.chunk_size})")
    reference, reference_source = _reference(cfg.reference_throughput)
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


def _generate(cfg, job: Dist, reference, reference_source, stdout, stderr) -> int:
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
        "seed_rule": "sha256(ditcache-sample:seed:index)", "num_samples": cfg.num_samples,
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
        indices, labels, samples = _sample_chunk(runner, decoder, cfg, classes, chunk, device)
        seconds = time.perf_counter() - t0
        path = shard_path(out, chunk)
        if cfg.crash_after is not None and len(computed) >= cfg.crash_after:
            # testing: die mid-write, leaving a half-written tmp file behind
            with open(path.with_name(f"{path.name}.tmp-{os.getpid()}"), "wb") as f:
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
            summary = _summary(cfg, job, everyone, valid, total, final, decoder.images, reference, reference_source,
                               run_hash)
            _write_json(out / SUMMARY_FILE, summary)
            result = ("ok", summary)
        except (RuntimeError, OSError) as exc:
            result = ("error", str(exc))
    result = job.broadcast(result)
    if result[0] == "error":
        raise RuntimeError(result[1])
    if job.rank == 0:
        summary = result[1]
        if cfg.json:
            print(json.dumps(summary, indent=2), file=stdout, flush=True)
        else:
            print(_summary_text(summary), file=stdout, flush=True)
    return 0


def _summary(cfg, job: Dist, everyone: list[dict], reused: int, total: int, final: Path, images: bool,
             reference: float | None, reference_source: str | None, run_hash: str) -> dict:
    computed_images = sum(s["images"] for s in everyone)
    wall = max(s["loop_s"] for s in everyone)
    throughput = computed_images / wall if computed_images and wall > 0 else None
    efficiency = None
    if throughput and reference:
        efficiency = throughput / (job.world * reference)
    return {
        "format": FORMAT_VERSION, "args_hash": run_hash, "world_size": job.world, "num_samples": cfg.num_samples,
        "chunks_total": total, "chunks_reused": reused, "chunks_computed": sum(len(s["chunks"]) for s in everyone),
        "computed": sorted(c for s in everyone for c in s["chunks"]), "images_computed": computed_images,
        "seconds": wall, "throughput": throughput, "reference_throughput": reference,
        "reference_source": reference_source, "scaling_efficiency": efficiency,
        "ranks": [{k: v for k, v in s.items() if k != "chunks"} | {"chunks": len(s["chunks"])} for s in everyone],
        "output": str(final), "output_kind": "uint8 images" if images else "latents (no --vae: no uint8 npz)",
    }


def _summary_text(s: dict) -> str:
    lines = [f"generate: {s['num_samples']} samples in {s['chunks_total']} chunks on {s['world_size']} rank(s): "
             f"{s['chunks_computed']} computed, {s['chunks_reused']} reused from earlier runs"]
    for r in s["ranks"]:
        rate = f"{r['throughput']:.2f} img/s" if r["throughput"] else "idle"
        lines.append(f"  rank {r['rank']}: {r['chunks']} chunks, {r['images']} images in {r['compute_s']:.2f} s: "
                     f"{rate} (torch threads {r['threads']}, load {r['load_s']:.1f} s)")
    if s["throughput"]:
        total = f"  total: {s['images_computed']} images in {s['seconds']:.2f} s: {s['throughput']:.2f} img/s"
        if s["scaling_efficiency"] is not None:
            total += (f"; scaling efficiency {100 * s['scaling_efficiency']:.0f}% of {s['world_size']} x "
                      f"{s['reference_throughput']:.2f} img/s (one rank, {s['reference_source']})")
        elif s["world_size"] == 1:
            total += " (one-rank reference: pass this summary.json as --reference-throughput to a multi-rank run)"
        lines.append(total)
    lines.append(f"wrote {s['output']}")
    if s["output_kind"].startswith("latents"):
        lines.append("  (latent model without --vae: latents stored, no uint8 sample .npz; pass --vae to decode)")
    return "\n".join(lines)


def generate_from_args(args: argparse.Namespace) -> int:
    """``ditcache generate`` (the CLI's handler)."""
    return generate(config_from_args(args))
