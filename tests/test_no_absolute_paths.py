"""No tracked text file names a folder of the machine it was written on: a fresh clone elsewhere must work.

Checked: every text file ``git ls-files`` lists (binary files skipped) for home and work folders, and the values
of the config files (YAML, JSON, TOML; comments aside) for ``/tmp/`` paths as well (scripts may use /tmp as
scratch at run time; a config that names a file there points at nothing on another machine). Not checked:
``benchmarks/results/``, the records of past runs (their command lines, working directories and weight sources as
those runs saw them; rewriting them would change what they record).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOME_OR_WORK = re.compile(r"(?<![\w.~-])/(?:work|root|home|Users)/[A-Za-z]")
TMP = re.compile(r"(?<![\w.~-])/tmp/")
CONFIG_SUFFIXES = {".yaml", ".yml", ".json", ".toml", ".cfg", ".ini"}
COMMENT = re.compile(r"(^|\s)#.*$")  # YAML / TOML / INI comments (JSON has none)
RECORDS = ("benchmarks/results/",)


def tracked_text_files() -> list[tuple[str, str]]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = []
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue  # not text
    return files


def offending_lines(text: str, pattern: re.Pattern, comments: bool = True) -> list[str]:
    """``line: text`` of every line the pattern finds (in the values only, without ``comments``)."""
    return [f"{i}: {line.strip()[:120]}" for i, line in enumerate(text.splitlines(), 1)
            if pattern.search(line if comments else COMMENT.sub("", line))]


def test_patterns_catch_what_they_are_for():
    assert HOME_OR_WORK.search("curves: /" + "work/main/schedules/curves.json")
    assert HOME_OR_WORK.search('"source": "/' + 'home/ann/weights"')
    assert not HOME_OR_WORK.search("curves: curves.json  # see docs/" + "work/x")
    assert TMP.search("scale_shift: /" + "tmp/x.safetensors") and not TMP.search("out: ./tmp/x")
    assert offending_lines("a: 1\n# run with --out /" + "tmp/x\nb: /" + "tmp/y\n", TMP, comments=False) == ["3: b: /tmp/y"]


def test_no_tracked_file_names_a_home_or_work_folder():
    files = tracked_text_files()
    assert len(files) > 50  # the list really was read
    bad = {name: lines for name, text in files if (lines := offending_lines(text, HOME_OR_WORK))}
    assert not bad, "absolute paths of a machine's folders (write them relative to the file that holds them):\n" + \
        "\n".join(f"{name}:{line}" for name, lines in bad.items() for line in lines)


def test_no_config_value_points_into_tmp():
    configs = [(n, t) for n, t in tracked_text_files() if Path(n).suffix in CONFIG_SUFFIXES and not n.startswith(RECORDS)]
    assert any(n.startswith("schedules/") for n, _ in configs)
    bad = {name: lines for name, text in configs
           if (lines := offending_lines(text, TMP, comments=Path(name).suffix == ".json"))}
    assert not bad, "config values under /tmp/ (gone after a reboot, absent on another machine):\n" + \
        "\n".join(f"{name}:{line}" for name, lines in bad.items() for line in lines)
