"""The README's main command, on stand-in random dit-fmnist weights (the shipped ones are tested in CI too)."""

from __future__ import annotations

import json

from ditcache.cli import main
from ditcache.graphs import get_spec
from ditcache.graphs.weights import load_model


def test_demo_runs_and_reports(tmp_path, capsys):
    model, _ = load_model(get_spec("dit-fmnist"), random_weights=True)
    model.save_pretrained(tmp_path / "w")
    assert main(["demo", "--weights", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "delta-dit" in text and "PSNR vs full" in text
    record = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert record["results"]["delta-dit"]["gmacs"] < record["results"]["full"]["gmacs"]
    assert record["results"]["delta-dit"]["psnr_db"] < 200  # cached differs from full
    assert (tmp_path / "out" / "full_vs_cached.png").stat().st_size > 0
