"""An engine directory records which checkpoint layout its weights were converted from, and its keys depend on it:
the same official DiT file computes another forward than diffusers' reading of the same tensors (docs/models.md)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import torch

from ditcache.export import export_engines as export_module
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.graphs import load_schedule

DELTA = "kind: delta-dit\nsteps: 4\nboundary: 2\ninterval: 2\ncached_blocks: 2\n"


def _official_dit():
    """tests/graphs/official_dit.py (the independent reference), loaded by path."""
    path = Path(__file__).resolve().parents[1] / "graphs" / "official_dit.py"
    spec = importlib.util.spec_from_file_location("official_dit_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_official_checkpoint_engines_record_and_key_the_format(tmp_path, monkeypatch):
    official = _official_dit()
    state = official.official_state(depth=4, hidden=32, heads=2, patch=2, in_channels=4, num_classes=1000,
                                    input_size=8)
    weights = tmp_path / "DiT-tiny.pt"
    torch.save(state, weights)
    schedule = tmp_path / "delta.yaml"
    schedule.write_text(DELTA)
    request = ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / "eng", backend="eager",
                            weights=str(weights), batch_size=1, guidance=False)
    first = export_engines(request, log=lambda m: None, progress=False)
    assert first.manifest.model["weights_format"] == "official-dit"

    loaded = load_engines(tmp_path / "eng", schedule=load_schedule(schedule))  # eager: rebuilt from the file
    assert loaded.manifest.model["weights_format"] == "official-dit"

    # the same file read as diffusers keys would be other graphs: every key changes
    real = export_module.load_model

    def as_diffusers(*args, **kwargs):
        model, info = real(*args, **kwargs)
        return model, dataclasses.replace(info, format="diffusers")

    monkeypatch.setattr(export_module, "load_model", as_diffusers)
    second = export_engines(request, log=lambda m: None, progress=False)
    assert sorted(second.rebuilt) == sorted(g.name for g in first.graphs)
    assert second.manifest.model["weights_format"] == "diffusers"
