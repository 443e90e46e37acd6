"""Atomic file writes: a file is either its old self or complete, never half-written.

Everything is written to a temporary name beside the target (same folder, so ``os.replace`` is a rename on one
file system), flushed to disk, then moved over the target; a failure removes the temporary file and leaves the
target untouched. The temporary name keeps the target's suffix, so writers that pick a format from it
(matplotlib's ``savefig``, PIL, ``np.savez``) write the right format. Files get the umask's mode (not
``mkstemp``'s 0600). Folder-shaped artifacts (engine directories, ONNX files with external data) keep their own
commit protocols in export/ and compiler/; this module is for single files.

Two options serve writers whose folder is read by a resume protocol (``ditcache generate``): ``tmp_tag`` names the
temporary file ``<name>.tmp-<tag>`` (visible, so a resumed run finds and removes what a killed one left), and
``fsync_folder`` also flushes the folder entry after the rename, so the new name survives a power cut.
"""

from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


TMP_TAG_MARK = ".tmp-"  # ``<name>.tmp-<tag>``: the temporary names of tagged writes


def _temporary_name(path: Path, tmp_tag: str | None) -> Path:
    if tmp_tag is not None:
        return path.with_name(f"{path.name}{TMP_TAG_MARK}{tmp_tag}")
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries; a no-op where the platform or file system cannot (Windows, some network mounts)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, mkdir: bool = False, *, tmp_tag: str | None = None,
                fsync_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on an exception it is removed.

    ``mkdir``: create ``path``'s folder first. ``tmp_tag``: name the temporary file ``<name>.tmp-<tag>`` instead of a
    hidden unique name. ``fsync_folder``: flush the folder after the rename.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, tmp_tag)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not create {tmp} (meant to replace {path})")
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync_folder:
        _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: Any, mkdir: bool = False, *, tmp_tag: str | None = None,
                 fsync_folder: bool = False) -> Path:
    """Text (UTF-8) or any bytes-like object (bytes, memoryview, a TensorRT host buffer) to ``path``, atomically."""
    with atomic_path(path, mkdir=mkdir, tmp_tag=tmp_tag, fsync_folder=fsync_folder) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)  # any bytes-like object, no copy
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, mkdir: bool = False, *, tmp_tag: str | None = None,
                      fsync_folder: bool = False, **dumps: Any) -> Path:
    """``json.dumps(data, **dumps)`` (indent 2 unless given) plus a newline, written atomically."""
    dumps.setdefault("indent", 2)
    return write_atomic(path, json.dumps(data, **dumps) + "\n", mkdir=mkdir, tmp_tag=tmp_tag,
                        fsync_folder=fsync_folder)
