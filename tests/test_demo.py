"""The README's main command, on stand-in random dit-fmnist weights (the shipped ones are tested in CI too)."""

from __future__ import annotations

import json

import pytest

from ditcache.cli import main
from ditcache.graphs import get_spec
from ditcache.graphs.weights import load_model


@pytest.mark.e2e
def test_demo_runs_and_reports(tmp_path, capsys):
    model, _ = load_model(get_spec("dit-fmnist"), random_weights=True)
    model.save_pretrained(tmp_path / "w")
    assert main(["demo", "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime Δ-DiT" in text and "PSNR vs full" in text and "export-engines" in text
    record = json.loads((tmp_path / "out" / "demo.json").read_text())
    results = record["results"]
    assert set(results) == {"eager full", "eager Δ-DiT", "onnxruntime Δ-DiT"}
    assert results["onnxruntime Δ-DiT"]["gmacs"] == results["eager Δ-DiT"]["gmacs"] < results["eager full"]["gmacs"]
    assert results["onnxruntime Δ-DiT"]["psnr_db"] < 200  # cached differs from full
    # the compiled engines compute what the eager Δ-DiT run computes (random weights: far from full, 17 dB seen)
    assert abs(results["onnxruntime Δ-DiT"]["psnr_db"] - results["eager Δ-DiT"]["psnr_db"]) < 0.1
    assert record["rebuilt"]  # the first run exports
    assert (tmp_path / "out" / "full_vs_cached.png").stat().st_size > 0
    # a second run reuses the engines
    assert main(["demo", "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--repeats", "1"]) == 0
    assert "nothing changed: no graph was rebuilt" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "demo.json").read_text())["rebuilt"] == []
