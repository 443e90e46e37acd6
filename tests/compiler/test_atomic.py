"""compiler/atomic.py: single-file writes are all-or-nothing and leave no temporary files."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ditcache.compiler.atomic import atomic_path, write_atomic, write_json_atomic


def test_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.engine"
    write_atomic(path, b"old")
    write_atomic(path, memoryview(b"new"))  # any bytes-like object (TensorRT hands out host buffers)
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.engine"]
    write_atomic(path, "text é")
    assert path.read_text(encoding="utf-8") == "text é"


def test_a_failed_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "curves.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("half way")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["curves.json"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not create"):
        with atomic_path(tmp_path / "x.png"):
            pass
    assert not list(tmp_path.iterdir())


def test_temporary_name_keeps_the_suffix_and_the_folder(tmp_path):
    """Writers that choose a format by suffix (savefig, PIL, np.savez) see the target's suffix."""
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".plot.png.")
        tmp.write_bytes(b"png")


def test_mode_follows_the_umask_and_mkdir(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json_atomic(tmp_path / "new" / "r.json", {"a": 1}, mkdir=True, sort_keys=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")


def test_tagged_temporary_name_for_resume_protocols(tmp_path):
    """``tmp_tag``: the visible ``<name>.tmp-<tag>`` a resumed ``generate`` finds and removes."""
    path = tmp_path / "chunk-000001.npz"
    with atomic_path(path, tmp_tag="123") as tmp:
        assert tmp == tmp_path / "chunk-000001.npz.tmp-123"
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["chunk-000001.npz"]
    with pytest.raises(RuntimeError):
        with atomic_path(path, tmp_tag="123") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["chunk-000001.npz"]
    write_json_atomic(tmp_path / "run.json", {"b": 1, "a": 2}, tmp_tag="9", sort_keys=True)
    assert (tmp_path / "run.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_fsync_folder_flushes_the_folder_after_the_rename(tmp_path, monkeypatch):
    from ditcache.compiler import atomic

    calls = []
    monkeypatch.setattr(atomic, "_fsync_folder", lambda folder: calls.append((folder, (tmp_path / "a").exists())))
    write_atomic(tmp_path / "a", b"x", fsync_folder=True)
    assert calls == [(tmp_path, True)]  # after the rename: the new name is what gets flushed
    write_atomic(tmp_path / "b", b"x")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "c", fsync_folder=True) as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("failed")
    assert calls == [(tmp_path, True)]  # not without the option, nor after a failed write
    monkeypatch.undo()
    atomic._fsync_folder(tmp_path / "missing")  # a folder that cannot be opened: no error (best effort)
    atomic._fsync_folder(tmp_path)
