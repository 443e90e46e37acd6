"""One shard per chunk: its samples, indices, labels, the run's arguments hash and a checksum."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .files import write_file

FORMAT_VERSION = 1
SHARD_DIR = "shards"


def shard_path(out: Path, chunk: int) -> Path:
    """Where ``chunk``'s shard lives in the output folder ``out``."""
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
    write_file(path, lambda f: np.savez(f, indices=indices, labels=labels, samples=samples,
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
