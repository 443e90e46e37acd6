"""The artifact store: hash-keyed, atomic, resumable folders of compiled graphs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ditcache.graphs.weights import sha256_file

ARTIFACTS = "artifacts"


def artifact_key(payload: dict[str, Any]) -> str:
    """sha256 of everything that changes an artifact (canonical JSON)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def artifact_dir(root: Path, graph: str, key: str) -> Path:
    return root / ARTIFACTS / f"{graph}-{key[:16]}"


def checksums(folder: Path, root: Path) -> dict[str, str]:
    """sha256 of every file in ``folder``, keyed by path relative to ``root``."""
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def staging_dir(root: Path, graph: str, key: str) -> Path:
    """A fresh temporary folder beside the final one (same filesystem, so the move is atomic)."""
    tmp = root / ARTIFACTS / f".tmp-{graph}-{key[:16]}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, final: Path) -> None:
    """Move a finished artifact folder into place (replacing a stale one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def verify(root: Path, files: dict[str, str]) -> str | None:
    """None when every file exists with its recorded checksum, else what is wrong."""
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            return f"missing file {rel}"
        if sha256_file(path) != digest:
            return f"checksum mismatch for {rel} (corrupted or modified)"
    return None


def remove_stale(root: Path, keep: set[str]) -> list[str]:
    """Delete artifact folders (and leftover staging folders) not in ``keep``; returns their names."""
    removed = []
    base = root / ARTIFACTS
    if not base.is_dir():
        return removed
    for folder in base.iterdir():
        if folder.name not in keep:
            shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
            removed.append(folder.name)
    return removed
