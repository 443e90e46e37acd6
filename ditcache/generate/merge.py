"""Rank 0's last step: every index 0..N-1 exactly once, the shards streamed into one byte-deterministic .npz."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .chunks import chunk_range
from .files import write_file
from .output import final_name
from .shards import read_shard, shard_path

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the merged .npz is byte-deterministic


def _write_npz_member(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
                      parts: Callable[[], Any]) -> None:
    info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    with zf.open(info, "w", force_zip64=True) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for part in parts():
            f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())


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
    final = out / final_name(spec, images, n)
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

    write_file(final, write)
    return final
