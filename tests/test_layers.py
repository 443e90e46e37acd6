"""The import layers of DESIGN.md, read from the source: entry points -> export/ -> compiler/ -> graphs/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> import name of the package it installs as
PACKAGES = {"graphs": "ditcache.graphs", "compiler": "ditcache.compiler", "export": "ditcache.export",
            "ditcache": "ditcache", "benchmarks": "ditcache.benchmarks"}
# what each layer may import of ditcache (prefixes); the root package ``ditcache`` itself counts as an entry point
ALLOWED = {
    "graphs": ("ditcache.graphs",),
    "compiler": ("ditcache.graphs", "ditcache.compiler"),
    "export": ("ditcache.graphs", "ditcache.compiler", "ditcache.export"),
    "ditcache": ("ditcache.graphs", "ditcache.compiler", "ditcache.export", "ditcache"),
    "benchmarks": ("ditcache.graphs", "ditcache.compiler", "ditcache.export", "ditcache", "ditcache.benchmarks"),
}


def _module_name(path: Path) -> str:
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = [PACKAGES[folder], *rest]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # ``from ditcache import apply`` reaches into the root package's entry points
    return found


def _layer_of(module: str) -> str | None:
    """The layer an imported ditcache module belongs to (None: not ditcache)."""
    if module != "ditcache" and not module.startswith("ditcache."):
        return None
    for folder, package in sorted(PACKAGES.items(), key=lambda kv: -len(kv[1])):
        if module == package or module.startswith(package + "."):
            return folder
    return None


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _violations(folder: str, paths: list[Path]) -> list[str]:
    """Imports in ``paths`` (files of ``folder``) that reach a layer ``folder`` may not import."""
    allowed_layers = {_layer_of(p) for p in ALLOWED[folder]}
    return [f"{path.relative_to(ROOT)}:{line} imports {module} ({_layer_of(module)}/)"
            for path in paths for line, module in _imports(path)
            if _layer_of(module) is not None and _layer_of(module) not in allowed_layers]


@pytest.mark.parametrize("folder", [f for f in PACKAGES if f != "benchmarks"])
def test_imports_run_one_way(folder):
    bad = _violations(folder, _sources(folder))
    assert not bad, f"{folder}/ may import only {ALLOWED[folder]}:\n" + "\n".join(bad)


def test_nothing_imports_benchmarks():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for folder in PACKAGES if folder != "benchmarks"
           for p in _sources(folder) for line, m in _imports(p) if _layer_of(m) == "benchmarks"]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation():
    """The reader resolves relative and absolute imports (a checker that finds nothing proves nothing)."""
    path = ROOT / "graphs" / "plan.py"
    modules = {m for _, m in _imports(path)}
    assert "ditcache.graphs.macs" in modules  # ``from .macs import SegmentCosts``
    probe = ROOT / "graphs" / "_layer_probe_test_only.py"
    probe.write_text("from ditcache.compiler.backend import get_backend\nfrom ..export import load\n"
                     "import ditcache.plugin\n")
    try:
        bad = _violations("graphs", [probe])
    finally:
        probe.unlink()
    assert [b.split(" imports ")[1] for b in bad] == [
        "ditcache.compiler.backend (compiler/)", "ditcache.export (export/)", "ditcache.plugin (ditcache/)"]
    assert _layer_of("ditcache.compiler.backend") == "compiler"
    assert _layer_of("ditcache") == "ditcache"
    assert _layer_of("ditcache.export.load") == "export"
    assert _layer_of("diffusers") is None


def test_import_ditcache_is_lazy():
    """``import ditcache`` and a graphs module load no backend, runtime or export module."""
    code = ("import sys, ditcache, ditcache.graphs.plan; "
            "print(','.join(m for m in sys.modules if m.startswith(('ditcache.compiler', 'ditcache.export', "
            "'ditcache.plugin', 'ditcache.cli', 'onnxruntime'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing ditcache.graphs.plan loaded: {out}"
