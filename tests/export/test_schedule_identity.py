"""An engine directory knows its schedule by content, not by where its files lay: the same schedule and scale/shift
copied elsewhere load it; another scale/shift content is refused; a miscalibrated schedule is refused too."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.export.manifest import ManifestError
from ditcache.graphs import ScheduleError, load_schedule

STEPS = 4
SCHEDULE = "kind: block-cache\nsteps: 4\nrecompute:\n  1: [0, 2]\n  2: [0, 3]\nscale_shift: ss.safetensors\n"


def write(folder, scale: float) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{k}.b{b}": torch.full((STEPS, 32), scale if k == "scale" else 0.0) for b in (1, 2)
               for k in ("scale", "shift")}
    save_file(tensors, str(folder / "ss.safetensors"))
    (folder / "s.yaml").write_text(SCHEDULE)


def test_corrected_engines_are_keyed_by_content(tmp_path):
    write(tmp_path / "a", 1.2)
    export_engines(ExportRequest(model="dit-tiny", schedule=tmp_path / "a" / "s.yaml", out=tmp_path / "eng",
                                 backend="eager", random_weights=True, batch_size=1), log=lambda m: None,
                   progress=False)
    manifest = json.loads((tmp_path / "eng" / "manifest.json").read_text())
    assert str(tmp_path) not in json.dumps(manifest["schedule"]) and "scale_shift_sha256" in manifest["schedule"]
    write(tmp_path / "elsewhere" / "deeper", 1.2)  # the same content in another folder
    loaded = load_engines(tmp_path / "eng", schedule=load_schedule(tmp_path / "elsewhere" / "deeper" / "s.yaml"))
    assert loaded.plan.corrected and loaded.plan.corrections == tmp_path / "eng" / "corrections.safetensors"
    shutil.rmtree(tmp_path / "a")  # the source is not needed once exported
    write(tmp_path / "other", 1.5)
    with pytest.raises(ManifestError, match="built for another schedule \\(scale_shift_sha256: built"):
        load_engines(tmp_path / "eng", schedule=load_schedule(tmp_path / "other" / "s.yaml"))


def test_a_miscalibrated_schedule_is_refused_by_the_loader(tmp_path):
    curves = {"format": "ditcache-curves/1", "steps": STEPS, "mean": [[0, 0.1, 0.1, 0.1]] * 4,
              "meta": {"model": "dit-s"}}
    (tmp_path / "c.json").write_text(json.dumps(curves))
    (tmp_path / "t.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.15\ncurves: c.json\n")
    (tmp_path / "f.yaml").write_text("kind: full\nsteps: 4\n")
    export_engines(ExportRequest(model="dit-tiny", schedule=tmp_path / "f.yaml", out=tmp_path / "eng",
                                 backend="eager", random_weights=True), log=lambda m: None, progress=False)
    with pytest.raises(ScheduleError, match="calibrated on dit-s, not dit-tiny"):
        load_engines(tmp_path / "eng", schedule=load_schedule(tmp_path / "t.yaml"))
