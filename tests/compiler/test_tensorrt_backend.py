"""TensorRT backend: availability, settings and engine records everywhere; real engines only with TensorRT + CUDA."""

from __future__ import annotations

import copy
import importlib.machinery
import json
import sys
import types

import pytest
import torch

from ditcache.compiler.backend import BackendUnavailable, BuildSettings, GraphSpec, TensorSpec, get_backend
from ditcache.compiler.graph_specs import plan_graphs
from ditcache.compiler.backends.tensorrt import (
    EngineIncompatible,
    TensorRTBackend,
    TensorRTOptions,
    _file_output_names,
    engine_compatibility,
    match_names,
)
from ditcache.graphs import parse_schedule, parts_for
from ditcache.graphs.planning import plan_for

CUDA = BuildSettings("fp32", "cuda")
SKIP_NO_TENSORRT = ("TensorRT is not installed: NVIDIA's wheels need NVIDIA's package index and an NVIDIA GPU, so "
                    "real-engine tests run only on a CUDA machine with `pip install ditcache[tensorrt]`")
SKIP_NO_CUDA = "TensorRT engines need an NVIDIA GPU (torch.cuda.is_available() is False)"


def _graph() -> GraphSpec:
    x = torch.zeros(2, 3)
    return GraphSpec("variant.full", torch.nn.Identity(), (TensorSpec.of("x", x),), (TensorSpec.of("out", x),), (x,))


def _fake_module(monkeypatch, name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo's import scan calls find_spec
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT missing, whatever this machine has (a None entry makes ``import tensorrt`` raise ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def fake_libraries(monkeypatch):
    """TensorRT 10 and polygraphy importable (empty stand-ins): what is left to check is CUDA and settings."""
    _fake_module(monkeypatch, "tensorrt", __version__="10.8.0")
    for name in ("polygraphy", "polygraphy.backend", "polygraphy.backend.trt"):
        _fake_module(monkeypatch, name)


# ---- always run ------------------------------------------------------------------------------------------------
def test_registered_under_its_name():
    backend = get_backend("tensorrt")
    assert isinstance(backend, TensorRTBackend)
    assert backend.name == "tensorrt" and backend.writes_artifacts


def test_reason_without_tensorrt_says_how_to_install(no_tensorrt):
    reason = TensorRTBackend().unavailable_reason(CUDA)
    assert reason.startswith("TensorRT is not installed")
    assert "pip install ditcache[tensorrt]" in reason and "CPU-only" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA; the unavailable case is faked elsewhere")
def test_reason_on_this_machine_is_clear():
    reason = TensorRTBackend().unavailable_reason(CUDA)
    assert reason and ("TensorRT is not installed" in reason or "CUDA is not available" in reason)


def test_reason_without_cuda_or_on_cpu(fake_libraries, monkeypatch):
    backend = TensorRTBackend()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA is not available" in backend.unavailable_reason(CUDA)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend.unavailable_reason(CUDA) is None
    assert "--device cuda" in backend.unavailable_reason(BuildSettings("fp32", "cpu"))


def test_reason_for_dynamo_route_names_torch_tensorrt(fake_libraries, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)
    reason = TensorRTBackend().unavailable_reason(BuildSettings("fp16", "cuda", {"route": "dynamo"}))
    assert "torch_tensorrt is not installed" in reason and "route=onnx" in reason


def test_weak_typing_refused_on_tensorrt_11(fake_libraries, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sys.modules["tensorrt"], "__version__", "11.1.0")
    reason = TensorRTBackend().unavailable_reason(BuildSettings("fp16", "cuda", {"strongly_typed": False}))
    assert "strongly typed networks only" in reason


def test_build_load_versions_raise_unavailable(no_tensorrt, tmp_path):
    backend, graph = TensorRTBackend(), _graph()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed.*pip install ditcache\\[tensorrt\\]"):
        backend.build(graph, CUDA, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-built
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        backend.load(graph, CUDA, [tmp_path / "variant.full.engine"])
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        backend.versions()


def test_engine_compatibility_names_the_field():
    here = {"tensorrt": "10.8.0", "compute_capability": "8.9"}
    assert engine_compatibility(dict(here), here) is None
    assert engine_compatibility({**here, "route": "onnx", "precision": "fp16"}, here) is None
    reason = engine_compatibility({**here, "tensorrt": "10.3.0"}, here)
    assert reason.startswith("tensorrt:") and "10.3.0" in reason and "10.8.0" in reason and "export-engines" in reason
    reason = engine_compatibility({**here, "compute_capability": "9.0"}, here)
    assert reason.startswith("compute_capability:") and "9.0" in reason and "8.9" in reason
    assert "no record" in engine_compatibility({"tensorrt": "10.8.0"}, here)
    dynamo = {**here, "torch": "2.9.0", "torch_tensorrt": "2.9.0"}
    assert engine_compatibility(dynamo, {**dynamo}) is None
    assert engine_compatibility(dynamo, {**dynamo, "torch_tensorrt": "2.10.0"}).startswith("torch_tensorrt:")


@pytest.mark.parametrize("options, match", [
    ({"route": "bogus"}, "route must be one of onnx, dynamo"),
    ({"rute": "onnx"}, "unknown tensorrt option"),
    ({"route": "dynamo", "cuda_graph": True}, "cuda_graph is for route=onnx"),
    ({"cuda_graph": "yes"}, "cuda_graph must be true or false"),
    ({"workspace_mib": 0}, "workspace_mib must be a positive integer"),
    ({"timing_cache": 3}, "timing_cache must be a path"),
    ({"route": "dynamo", "weight_stripped": True}, "weight_stripped is for route=onnx"),
    ({"weight_stripped": True, "optimize": True}, "optimize=false"),
    ({"weight_stripped": "yes"}, "weight_stripped must be true or false"),
])
def test_invalid_settings_raise_value_error(options, match, tmp_path):
    backend, settings = TensorRTBackend(), BuildSettings("fp16", "cuda", options)
    with pytest.raises(ValueError, match=match):
        backend.unavailable_reason(settings)
    with pytest.raises(ValueError, match=match):
        backend.build(_graph(), settings, tmp_path)
    with pytest.raises(ValueError, match=match):
        backend.load(_graph(), settings, [])


def test_options_defaults_and_export_passthrough():
    assert TensorRTOptions.of(CUDA) == TensorRTOptions()
    parsed = TensorRTOptions.of(BuildSettings("fp16", "cuda", {"route": "onnx", "cuda_graph": True, "opset": 18,
                                                                "timing_cache": "/tmp/t.cache", "workspace_mib": 512}))
    assert parsed.cuda_graph and parsed.workspace_mib == 512 and parsed.timing_cache == "/tmp/t.cache"
    assert parsed.export == (("opset", 18),)


def test_weight_stripped_engines_share_the_model_weights_file():
    stripped = BuildSettings("fp16", "cuda", {"weight_stripped": True, "opset": 18})
    parsed = TensorRTOptions.of(stripped)
    assert parsed.weight_stripped and parsed.export == (("opset", 18), ("optimize", False))  # names kept for refit
    backend = TensorRTBackend()
    assert backend.shared_weights(stripped) == "model" and backend.shared_weights(CUDA) is None


CPU_DEVICE = torch.device("cpu")


class _FakeRefitter:
    """Stands in for trt.Refitter to test refit_engine's own logic (the order of checks), not TensorRT."""

    def __init__(self, names, missing=()):
        self.names, self.missing, self.set, self.refitted = list(names), list(missing), {}, False

    def get_all_weights(self):
        return self.names

    def set_named_weights(self, name, weights, location):
        self.set[name] = weights
        return True

    def get_missing_weights(self):
        return self.missing

    def refit_cuda_engine(self):
        self.refitted = True
        return True


def _fake_trt(refitter):
    class Weights:
        def __init__(self, dtype, ptr, count):
            self.dtype, self.ptr, self.count = dtype, ptr, count

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    return types.SimpleNamespace(Refitter=lambda engine, logger: refitter, Weights=Weights, Logger=Logger,
                                 TensorLocation=types.SimpleNamespace(DEVICE="device"), float32="f32")


def test_refit_sets_every_weight_from_the_shared_tensors_and_refuses_missing_ones(monkeypatch):
    from ditcache.compiler.backends.tensorrt import refit_engine
    from ditcache.compiler.shared_weights import SharedWeights, WeightEntry

    shared = SharedWeights("fp32", source={"blocks.0.w": torch.ones(4, 4), "blocks.0.b": torch.zeros(4)})
    entries = {"segments.w": WeightEntry("blocks.0.w", (4, 4), "float32"),
               "segments.b": WeightEntry("blocks.0.b", (4,), "float32")}
    refitter = _FakeRefitter(["segments.w", "segments.b"])
    fake = _fake_trt(refitter)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # _trt_dtypes reads the dtype names from "tensorrt"
    refit_engine(object(), "variant.full", entries, shared, None, CPU_DEVICE, trt_module=fake)
    assert refitter.refitted and sorted(refitter.set) == ["segments.b", "segments.w"]
    assert refitter.set["segments.w"].ptr == shared.tensors["blocks.0.w"].data_ptr()  # the shared memory itself

    unknown = _FakeRefitter(["segments.w", "segments.b", "segments.extra"])
    with pytest.raises(ValueError, match="does not record"):
        refit_engine(object(), "variant.full", entries, shared, None, CPU_DEVICE, trt_module=_fake_trt(unknown))
    assert not unknown.set and not unknown.refitted  # refused before anything reached TensorRT
    partial = _FakeRefitter(["segments.w", "segments.b"], missing=["segments.b"])
    with pytest.raises(ValueError, match="still misses weights"):
        refit_engine(object(), "variant.full", entries, shared, None, CPU_DEVICE, trt_module=_fake_trt(partial))
    assert not partial.refitted


def test_match_names_by_name_then_by_position():
    assert match_names("inputs", ["t", "x"], ("x", "t"), "g") == ["x", "t"]
    # the ONNX export renames a segment's output h (its input's name) to h_out: found by name
    assert match_names("outputs", ["h_out"], ("h_out",), "g") == ["h_out"]
    assert match_names("outputs", ["h_1"], ("h_out",), "g") == ["h_1"]  # another exporter's renaming: by position
    with pytest.raises(ValueError, match="foreign or stale"):
        match_names("inputs", ["x"], ("x", "t"), "g")


def test_segment_output_named_as_in_the_onnx_file(tiny_parts, tiny_spec):
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 4, "interval": 2, "cached_blocks": 2}), tiny_spec)
    blocks = next(g for g in plan_graphs(tiny_parts, plan, "segment", 2, torch.float32) if "blocks" in g.name)
    assert blocks.input_names[0] == "h" and _file_output_names(blocks) == ("h_out",)


# ---- real engines: TensorRT and a GPU --------------------------------------------------------------------------
@pytest.fixture
def trt():
    module = pytest.importorskip("tensorrt", reason=SKIP_NO_TENSORRT)
    if not torch.cuda.is_available():
        pytest.skip(SKIP_NO_CUDA)
    return module


TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _cuda_graphs(tiny_parts, tiny_spec, precision: str, granularity: str = "variant") -> list[GraphSpec]:
    dtype = DTYPES[precision]
    parts = parts_for(copy.deepcopy(tiny_parts.model).to("cuda", dtype).eval(), tiny_spec)
    plan = plan_for(parse_schedule({"kind": "delta-dit", "steps": 4, "interval": 2, "cached_blocks": 2}), tiny_spec)
    return plan_graphs(parts, plan, granularity, 2, dtype)  # batch 2: one image with its CFG twin


def _assert_matches_eager(fn, graph: GraphSpec, precision: str, inputs=None) -> tuple[torch.Tensor, ...]:
    inputs = graph.example_inputs if inputs is None else inputs
    with torch.no_grad():
        want = graph.module(*inputs)
    got = fn(*inputs)
    assert len(got) == len(want)
    for g, w, spec in zip(got, want, graph.outputs):
        assert g.is_cuda and tuple(g.shape) == spec.shape and str(g.dtype) == f"torch.{spec.dtype}"
        tol = TOLERANCE[precision]
        torch.testing.assert_close(g.float(), w.float(), atol=tol, rtol=tol, msg=f"{graph.name} {spec.name}")
    return got


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_engines_match_eager_and_share_scratch(trt, tiny_parts, tiny_spec, precision, tmp_path):
    graphs = _cuda_graphs(tiny_parts, tiny_spec, precision)
    backend, settings = TensorRTBackend(), BuildSettings(precision, "cuda")
    built = {g.name: backend.build(g, settings, tmp_path) for g in graphs}  # one directory: one timing cache
    for graph in graphs:
        assert sorted(p.name for p in built[graph.name]) == sorted(
            f"{graph.name}{suffix}" for suffix in (".engine", ".onnx", ".trt.json"))
    assert (tmp_path / "timing.cache").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]
    record = json.loads((tmp_path / f"{graphs[0].name}.trt.json").read_text())
    assert record["tensorrt"] == trt.__version__
    assert record["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability())
    fns = {g.name: backend.load(g, settings, built[g.name]) for g in graphs}
    for graph in graphs:
        _assert_matches_eager(fns[graph.name], graph, precision)
    assert backend._scratch_generation == 1  # one buffer, sized once for the largest engine, shared by all


def test_segment_engines_match_eager(trt, tiny_parts, tiny_spec, tmp_path):
    backend = TensorRTBackend()
    for graph in _cuda_graphs(tiny_parts, tiny_spec, "fp32", "segment"):  # blocks: input and output both "h"
        _assert_matches_eager(backend.load(graph, CUDA, backend.build(graph, CUDA, tmp_path)), graph, "fp32")


def test_cuda_graph_outputs_survive_the_next_replay(trt, tiny_parts, tiny_spec, tmp_path):
    graph = next(g for g in _cuda_graphs(tiny_parts, tiny_spec, "fp32") if len(g.outputs) == 2)  # records a cache
    settings = BuildSettings("fp32", "cuda", {"cuda_graph": True})
    backend = TensorRTBackend()
    fn = backend.load(graph, settings, backend.build(graph, settings, tmp_path))
    first = _assert_matches_eager(fn, graph, "fp32")
    kept = [t.clone() for t in first]
    other = tuple(torch.randn_like(t) if t.is_floating_point() else t for t in graph.example_inputs)
    _assert_matches_eager(fn, graph, "fp32", other)
    for a, b in zip(first, kept):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_engine_for_another_gpu_is_refused(trt, tiny_parts, tiny_spec, tmp_path):
    graph = _cuda_graphs(tiny_parts, tiny_spec, "fp32")[0]
    backend = TensorRTBackend()
    files = backend.build(graph, CUDA, tmp_path)
    record_path = tmp_path / f"{graph.name}.trt.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "compute_capability": "1.0"}))
    with pytest.raises(EngineIncompatible, match="compute_capability"):
        backend.load(graph, CUDA, files)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_dynamo_route_matches_eager(trt, tiny_parts, tiny_spec, precision, tmp_path):
    pytest.importorskip("torch_tensorrt", reason="the dynamo route needs torch_tensorrt (pip install torch-tensorrt)")
    graph = _cuda_graphs(tiny_parts, tiny_spec, precision)[0]
    settings = BuildSettings(precision, "cuda", {"route": "dynamo"})
    backend = TensorRTBackend()
    files = backend.build(graph, settings, tmp_path)
    assert sorted(p.name for p in files) == [f"{graph.name}.ep", f"{graph.name}.trt.json"]
    _assert_matches_eager(backend.load(graph, settings, files), graph, precision)


def test_weight_stripped_engines_refit_from_the_shared_file(trt, tmp_path):
    """export-engines --backend tensorrt --option weight_stripped=true: no ONNX and no weights in the artifacts,
    one weights file, engines refitted from it at load and equal to eager."""
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.export_engines import ExportRequest, export_engines
    from ditcache.export.load import load_engines
    from ditcache.graphs import get_spec, load_model

    (tmp_path / "s.yaml").write_text("kind: delta-dit\nsteps: 3\nboundary: 3\ninterval: 2\ncached_blocks: 2\n")
    report = export_engines(ExportRequest(model="dit-tiny", schedule=tmp_path / "s.yaml", out=tmp_path / "eng",
                                          backend="tensorrt", random_weights=True, batch_size=2, device="cuda",
                                          granularity="variant", options={"weight_stripped": True}),
                            log=lambda m: None, progress=False)
    assert report.manifest.weights.kind == "model"
    for record in report.manifest.artifacts.values():
        assert not [f for f in record.files if ".onnx" in f] and record.shared == ["weights/fp32.safetensors"]
    loaded = load_engines(tmp_path / "eng")
    request = SampleRequest((3, 7, 11), steps=3, seed=5)
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    want = sample_with_plan(eager_dispatcher(model.to("cuda"), spec, loaded.plan), spec, request, device="cuda")
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request, device="cuda")
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
