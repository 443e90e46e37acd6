"""Adaptive schedules through export-engines and the compiled runner (export/load.py): the three program graphs per
backend, the same decisions and samples as the independent reference loop; a new threshold rebuilds nothing."""

from __future__ import annotations

import json

import pytest
import torch
from adaptive_reference import AdaptiveReference

from ditcache.compiler.runtime.runner import sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest, sample
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.export.manifest import ManifestError
from ditcache.graphs.schedule import load_schedule

STEPS = 8
SCHEDULE = ("kind: adaptive\nsteps: 8\nsignal: {signal}\nthreshold: {threshold}\nwarmup: 2\nfinal: 1\n"
            "max_consecutive: 2\n")


def write_schedule(path, signal="first-block", threshold=0.3):
    path.write_text(SCHEDULE.format(signal=signal, threshold=threshold))
    return path


def reference(model, spec, request, signal="first-block", threshold=0.3):
    loop = AdaptiveReference(model, steps=STEPS, threshold=threshold, signal=signal,
                             start=1 if signal == "first-block" else 0, warmup=2, final=1, cap=2)
    return sample(loop, spec, request), loop.programs


def export(tmp_path, backend, schedule, batch=2, out="eng"):
    return export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / out, backend=backend,
                                        random_weights=True, batch_size=batch), log=lambda m: None, progress=False)


@pytest.mark.parametrize("backend,signal", [("eager", "first-block"), ("onnxruntime", "modulated-input"),
                                            pytest.param("inductor", "first-block", marks=pytest.mark.slow)])
def test_compiled_runner_matches_the_reference(tiny_model, tiny_spec, tmp_path, backend, signal):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    schedule = write_schedule(tmp_path / "a.yaml", signal)
    report = export(tmp_path, backend, schedule)
    assert sorted(report.manifest.artifacts) == ["adaptive.compute", "adaptive.probe", "adaptive.replay"]
    loaded = load_engines(tmp_path / "eng", schedule=load_schedule(schedule))
    request = SampleRequest((1, 2), STEPS, 4.0, 3, "ddim")
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want, programs = reference(tiny_model, tiny_spec, request, signal)
    assert [d.program for d in loaded.dispatcher.decisions] == programs and "replay" in programs
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_a_new_threshold_rebuilds_nothing_and_is_checked(tmp_path):
    export(tmp_path, "eager", write_schedule(tmp_path / "a.yaml"))
    again = export(tmp_path, "eager", write_schedule(tmp_path / "b.yaml", threshold=0.1))
    assert again.rebuilt == []  # the graphs do not depend on the policy
    manifest = json.loads((tmp_path / "eng" / "manifest.json").read_text())
    assert manifest["schedule"]["threshold"] == 0.1 and manifest["plan"]["kind"] == "adaptive"
    with pytest.raises(ManifestError, match="threshold"):
        load_engines(tmp_path / "eng", schedule=load_schedule(tmp_path / "a.yaml"))


def test_segment_granularity_is_refused(tmp_path):
    with pytest.raises(ValueError, match="variant granularity"):
        export_engines(ExportRequest(model="dit-tiny", schedule=write_schedule(tmp_path / "a.yaml"),
                                     out=tmp_path / "eng", backend="eager", random_weights=True,
                                     granularity="segment"), log=lambda m: None, progress=False)
