"""The output folder's write protocol: ``<name>.tmp-<pid>``, fsync, rename, folder fsync (compiler/atomic.py).

The temporary names are visible on purpose: a resumed run removes the ``*.tmp-*`` files a killed one left.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ditcache.compiler.atomic import TMP_TAG_MARK, atomic_path, write_json_atomic

TMP_GLOB = f"*{TMP_TAG_MARK}*"


def tmp_name(path: Path) -> Path:
    """The temporary file this process writes ``path`` through."""
    return path.with_name(f"{path.name}{TMP_TAG_MARK}{os.getpid()}")


def write_file(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into ``path``'s temporary file, then commit it onto ``path``."""
    with atomic_path(path, tmp_tag=str(os.getpid()), fsync_folder=True) as tmp:
        with open(tmp, "wb") as f:
            write(f)


def write_json(path: Path, data: dict) -> None:
    """``data`` as indented, key-sorted JSON, committed like :func:`write_file`."""
    write_json_atomic(path, data, tmp_tag=str(os.getpid()), fsync_folder=True, indent=2, sort_keys=True)
