"""Plots are optional: without matplotlib (no ``bench`` extra) every plotting function says so and draws nothing."""

import sys

from ditcache.benchmarks.bench_report import plot_speedup
from ditcache.benchmarks.plots import pyplot


def test_without_matplotlib_plots_are_skipped(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert pyplot("a test plot") is None
    assert "a test plot not drawn" in capsys.readouterr().out
    path = tmp_path / "speedup.png"
    plot_speedup(path, [], "title")
    assert not path.exists() and "not drawn" in capsys.readouterr().out
