"""Paths in saved results: written relative to the repository, so a record reads the same on every machine."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_relative(text: str) -> str:
    """``text`` (a results file's contents) with the repository's absolute path replaced by repo-relative paths."""
    root = str(REPO_ROOT)
    return text.replace(root + "/", "").replace(f'"{root}"', '"."').replace(root, ".")
