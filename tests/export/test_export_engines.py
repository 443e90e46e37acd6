"""export-engines and loading an engine directory, on the eager backend (fast) for every check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.backend import BackendUnavailable
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.export.manifest import MANIFEST_NAME, ManifestError
from ditcache.graphs import get_spec, load_model, load_schedule

DELTA = "kind: delta-dit\nsteps: 6\nboundary: 3\ninterval: 2\ncached_blocks: 2\n"


@pytest.fixture()
def schedule_file(tmp_path) -> Path:
    path = tmp_path / "delta.yaml"
    path.write_text(DELTA)
    return path


def export(tmp_path, schedule_file, **kw):
    request = ExportRequest(model="dit-tiny", schedule=schedule_file, out=tmp_path / "eng", backend="eager",
                            random_weights=True, batch_size=2, **kw)
    return export_engines(request, log=lambda m: None, progress=False)


def test_reexport_reuses_and_change_rebuilds_exactly_what_changed(tmp_path, schedule_file):
    first = export(tmp_path, schedule_file, granularity="segment")
    assert sorted(first.rebuilt) == ["segment.blocks.0-2", "segment.blocks.2-4", "segment.head", "segment.tail"]
    again = export(tmp_path, schedule_file, granularity="segment")
    assert again.rebuilt == [] and "nothing changed" in again.summary()
    # Nc 2 -> 1 moves the cut points: the head and tail are unchanged, the block segments are new
    schedule_file.write_text(DELTA.replace("cached_blocks: 2", "cached_blocks: 1"))
    changed = export(tmp_path, schedule_file, granularity="segment")
    assert sorted(changed.rebuilt) == ["segment.blocks.0-1", "segment.blocks.1-3", "segment.blocks.3-4"]
    assert len(changed.removed) == 2  # the old block segments are gone from disk


def test_precision_change_rebuilds_everything(tmp_path, schedule_file):
    export(tmp_path, schedule_file)
    report = export(tmp_path, schedule_file, precision="bf16")
    assert len(report.rebuilt) == len(report.graphs) == 5


@pytest.mark.parametrize("granularity", ["variant", "segment"])
def test_loaded_engines_sample_like_the_eager_runtime(tmp_path, schedule_file, granularity):
    export(tmp_path, schedule_file, granularity=granularity)
    loaded = load_engines(tmp_path / "eng", images=2, guidance=True, schedule=load_schedule(schedule_file))
    request = SampleRequest((3, 4), steps=6, seed=2)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    want = sample_with_plan(eager_dispatcher(model, spec, loaded.plan), spec, request)
    torch.testing.assert_close(got, want)


def test_interrupted_export_does_not_load_and_resumes(tmp_path, schedule_file, monkeypatch):
    from ditcache.compiler.backends import eager

    export(tmp_path, schedule_file)
    calls = {"n": 0}
    real = eager.EagerBackend.build

    def crash_on_third(self, graph, settings, directory):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, graph, settings, directory)

    schedule_file.write_text(DELTA.replace("cached_blocks: 2", "cached_blocks: 1"))  # 4 new variant graphs
    monkeypatch.setattr(eager.EagerBackend, "build", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path, schedule_file)
    with pytest.raises(ManifestError, match="did not finish"):
        load_engines(tmp_path / "eng")
    monkeypatch.setattr(eager.EagerBackend, "build", real)
    resumed = export(tmp_path, schedule_file)
    assert len(resumed.rebuilt) == len(resumed.graphs) - 2  # the two finished before the crash are reused
    load_engines(tmp_path / "eng")


def test_request_mismatches_are_refused(tmp_path, schedule_file):
    export(tmp_path, schedule_file)
    eng = tmp_path / "eng"
    load_engines(eng, images=3)  # any batch size runs (in chunks of the engines' batch): not a mismatch
    with pytest.raises(ManifestError, match="classifier-free guidance"):
        load_engines(eng, guidance=False)
    with pytest.raises(ManifestError, match="precision 'fp32', the request has 'fp16'"):
        load_engines(eng, precision="fp16")
    other = tmp_path / "other.yaml"
    other.write_text(DELTA.replace("boundary: 3", "boundary: 4"))
    with pytest.raises(ManifestError, match="schedule"):
        load_engines(eng, schedule=load_schedule(other))
    with pytest.raises(ManifestError, match="weights sha256"):
        load_engines(eng, weights_sha256="0" * 64)


def test_library_version_mismatch_is_refused(tmp_path, schedule_file):
    export(tmp_path, schedule_file)
    path = tmp_path / "eng" / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["backend"]["versions"]["torch"] = "1.0.0"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="built with torch '1.0.0'"):
        load_engines(tmp_path / "eng")


def test_missing_and_corrupted_artifacts_and_manifest(tmp_path, schedule_file):
    export(tmp_path, schedule_file)
    eng = tmp_path / "eng"
    # the eager backend writes no files: give one artifact a file by hand to corrupt and remove
    manifest = json.loads((eng / MANIFEST_NAME).read_text())
    name, record = next(iter(manifest["artifacts"].items()))
    folder = next((eng / "artifacts").glob(name + "-*"))
    (folder / "weights.bin").write_bytes(b"\0" * 16)
    from ditcache.graphs.weights import sha256_file

    record["files"] = {f"artifacts/{folder.name}/weights.bin": sha256_file(folder / "weights.bin")}
    (eng / MANIFEST_NAME).write_text(json.dumps(manifest))
    load_engines(eng)
    (folder / "weights.bin").write_bytes(b"\1" * 16)
    with pytest.raises(ManifestError, match="checksum mismatch"):
        load_engines(eng)
    (folder / "weights.bin").unlink()
    with pytest.raises(ManifestError, match="missing file"):
        load_engines(eng)
    (eng / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_engines(eng)
    shutil.rmtree(eng)
    with pytest.raises(ManifestError, match="does not exist"):
        load_engines(eng)


def test_unknown_backend_and_bad_arguments(tmp_path, schedule_file):
    def attempt(**kw):
        fields = {"model": "dit-tiny", "schedule": schedule_file, "out": tmp_path / "e", "backend": "eager",
                  "random_weights": True, **kw}
        export_engines(ExportRequest(**fields), log=lambda m: None, progress=False)

    with pytest.raises(ValueError, match="unknown backend 'tensorrtx'; choose one of: eager, inductor"):
        attempt(backend="tensorrtx")
    with pytest.raises(ValueError, match="batch-size"):
        attempt(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        attempt(precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            attempt(device="cuda")


def test_cli_export_and_run(tmp_path, schedule_file, capsys):
    from ditcache.cli import main

    def export_args(backend="eager", out="eng"):
        return ["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", str(schedule_file),
                "--backend", backend, "--out", str(tmp_path / out), "--batch-size", "2", "--quiet"]

    args = export_args()
    assert main(args) == 0
    assert "5 built" in capsys.readouterr().out
    assert main(args) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", "1", "2", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "latents.pt").is_file()
    # one export serves any batch: 1 and 3 images through the batch-2 engines
    for classes in (["1"], ["1", "2", "3"]):
        assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", *classes, "--out", str(tmp_path / "o")]) == 0
        assert torch.load(tmp_path / "o" / "latents.pt").shape[0] == len(classes)
    with pytest.raises(SystemExit):  # argparse rejects an unknown backend with the list of choices
        main(export_args(backend="nope"))
    assert "invalid choice: 'nope'" in capsys.readouterr().err
