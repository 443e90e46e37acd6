"""The inductor backend: AOTInductor packages written at export, loaded without dynamo, weights shared.

Compiles are slow on 2 cores (~15 s per graph): one tiny two-layer package (module fixture) serves the checks of
the backend itself; one dit-tiny Δ-DiT export (3 variant packages, slow) serves the end-to-end checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from ditcache.compiler.backend import BuildSettings, GraphSpec, TensorSpec, get_backend
from ditcache.compiler.backends.inductor_aot import InductorAOTBackend, package_mismatch
from ditcache.compiler.shared_weights import SharedWeights, model_tensors, weight_names

CPU = BuildSettings("fp32", "cpu")


class _Root(nn.Module):
    """A 'model' whose FQNs differ from the graph module's (``net.0.weight`` vs ``0.weight``)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 12)).eval()  # biases > 8: not inlined


class _Flat(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.inner = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # a fused kernel first (layer norm): it reads its input with the strides it was compiled for
        return (self.inner(nn.functional.layer_norm(x, x.shape[-1:])),)


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    root = _Root()
    module = _Flat(root.net).eval()
    x = torch.randn(8, 3).t()  # (3, 8), transposed: compiled for contiguous inputs all the same (see the runner)
    with torch.no_grad():
        out = module(x)[0]
    graph = GraphSpec("variant.tiny", module, (TensorSpec.of("x", x),), (TensorSpec.of("out", out),), (x,),
                      weight_names=weight_names(module, root))
    folder = tmp_path_factory.mktemp("aot-tiny")
    files = InductorAOTBackend().build(graph, CPU, folder, weights=SharedWeights("fp32", source=model_tensors(root)))
    return root, graph, files


def _shared(root: nn.Module) -> SharedWeights:
    return SharedWeights("fp32", source={k: v.clone() for k, v in model_tensors(root).items()})


def test_registered_as_inductor_and_jit_apart():
    assert isinstance(get_backend("inductor"), InductorAOTBackend)
    assert get_backend("inductor").writes_artifacts and not get_backend("inductor-jit").writes_artifacts
    backend = InductorAOTBackend()
    assert backend.unavailable_reason(CPU) is None
    assert "cuda" in backend.unavailable_reason(BuildSettings(options={"cuda_graphs": True}))
    assert "unknown inductor option" in backend.unavailable_reason(BuildSettings(options={"mode": "x"}))
    assert "true or false" in backend.unavailable_reason(BuildSettings(options={"max_autotune": 1}))


def test_package_keeps_no_weights_and_records_their_model_names(tiny_package):
    root, graph, files = tiny_package
    names = sorted(Path(f).name for f in files)
    assert names == ["variant.tiny.pt2", "variant.tiny.weights.json"]
    constants = json.loads(Path(files[1]).read_text())["constants"]
    assert {e["key"] for e in constants.values()} == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert all(name.startswith("inner.") for name in constants)  # the package's own names, mapped to the model's


def test_loaded_package_references_the_shared_tensors(tiny_package):
    """(The fixture's example input is transposed: a package compiled for its strides would read these contiguous
    inputs wrong, as a PixArt block segment did, whose input is the patch embedding's transposed output.)"""
    root, graph, files = tiny_package
    shared = _shared(root)
    x = torch.randn(3, 8)
    runs = [InductorAOTBackend().load(graph, CPU, files, weights=shared) for _ in range(2)]
    with torch.no_grad():
        want = graph.module(x)[0]
    for run in runs:
        torch.testing.assert_close(run(x)[0], want, rtol=1e-5, atol=1e-6)
        constants, _ = run.constants
        for name, tensor in constants.items():  # the very tensors of the one SharedWeights, not copies
            assert tensor.data_ptr() == shared.tensors[graph.weight_names[name]].data_ptr()
    shared.tensors["net.2.bias"].add_(1.0)  # one write to the shared memory moves every loaded package
    for run in runs:
        torch.testing.assert_close(run(x)[0], want + 1.0, rtol=1e-5, atol=1e-5)


_MISSING = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from ditcache.compiler.backend import BuildSettings, GraphSpec, TensorSpec
    from ditcache.compiler.backends.inductor_aot import InductorAOTBackend
    from ditcache.compiler.shared_weights import SharedWeights
    pt2, record, case = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    data = json.loads(record.read_text())
    tensors = {e["key"]: torch.zeros(e["shape"]) for e in data["constants"].values()}
    if case == "record":  # the weight map lacks a constant the package asks for
        data["constants"].pop(sorted(data["constants"])[0])
        record.write_text(json.dumps(data))
    else:  # the shared weights lack a tensor
        tensors.pop(sorted(tensors)[0])
    x = torch.zeros(3, 8)
    graph = GraphSpec("variant.tiny", None, (TensorSpec.of("x", x),), (TensorSpec.of("out", torch.zeros(3, 12)),))
    try:
        InductorAOTBackend().load(graph, BuildSettings(), [pt2, record], weights=SharedWeights("fp32", source=tensors))
    except ValueError as exc:
        print("REFUSED:", exc)
""")


@pytest.mark.parametrize("case", ["record", "weights"])
def test_missing_constant_is_refused_without_crashing(tiny_package, tmp_path, case):
    """An incomplete constant map segfaults AOTInductor's loader: it must be refused before it gets there (in a
    child process, so that a crash fails this test instead of killing the session)."""
    _, _, files = tiny_package
    pt2, record = (shutil.copy(f, tmp_path) for f in files)
    done = subprocess.run([sys.executable, "-c", _MISSING, pt2, record, case], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    assert "REFUSED:" in done.stdout and "variant.tiny" in done.stdout, done.stdout + done.stderr[-2000:]
    assert ("does not record" if case == "record" else "missing from the shared weights") in done.stdout


def test_wrong_shape_and_foreign_packages_are_refused(tiny_package, tmp_path, monkeypatch):
    root, graph, files = tiny_package
    shared = _shared(root)
    shared.tensors["net.0.bias"] = torch.zeros(17)
    with pytest.raises(ValueError, match=r"net.0.bias.*compiled for float32\[16\]"):
        InductorAOTBackend().load(graph, CPU, files, weights=shared)
    with pytest.raises(ValueError, match="shared weights file"):
        InductorAOTBackend().load(graph, CPU, files)
    junk = tmp_path / "variant.tiny.pt2"
    junk.write_bytes(b"not a zip at all")
    assert "not a readable AOTInductor package" in package_mismatch(junk, CPU)
    with pytest.raises(ValueError, match="not a readable AOTInductor package"):
        InductorAOTBackend().load(graph, CPU, [junk, files[1]], weights=_shared(root))
    for probe in ("_is_avx2_supported", "_is_avx512_supported", "_is_vnni_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False)  # a CPU without vector extensions
    if torch.cpu._is_avx2_supported is not None and package_mismatch(Path(files[0]), CPU) is None:
        pytest.skip("the package was compiled without x86 vector extensions (nothing to lack)")
    assert "CPU instruction set" in package_mismatch(Path(files[0]), CPU)


# ---- end to end: export-engines --backend inductor on dit-tiny ------------------------------------------------
DELTA = "kind: delta-dit\nsteps: 3\nboundary: 3\ninterval: 2\ncached_blocks: 2\n"  # 3 variants
LABELS = (3, 7, 11)  # 3 images through batch-2 engines: two chunks, the last one padded


@pytest.fixture(scope="module")
def aot_engines(tmp_path_factory):
    from ditcache.export.export_engines import ExportRequest, export_engines

    root = tmp_path_factory.mktemp("aot-engines")
    (root / "delta.yaml").write_text(DELTA)
    request = ExportRequest(model="dit-tiny", schedule=root / "delta.yaml", out=root / "eng", backend="inductor",
                            random_weights=True, batch_size=2)
    report = export_engines(request, log=lambda m: None, progress=False)
    return request, report


_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile was called while running AOT engines")
    torch.compile = refuse
    from torch._dynamo.utils import counters
    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.export.load import load_engines
    loaded = load_engines(sys.argv[1])
    labels = tuple(int(c) for c in sys.argv[3].split(","))
    latents = sample_with_plan(loaded.dispatcher, loaded.spec, SampleRequest(labels, steps=loaded.plan.num_steps,
                                                                              seed=5))
    used = {k: dict(v) for k, v in counters.items() if v}
    assert not used, f"dynamo/inductor ran: {used}"
    torch.save(latents, sys.argv[2])
""")


@pytest.mark.slow
def test_export_writes_packages_and_the_weights_once(aot_engines):
    request, report = aot_engines
    m = report.manifest
    out = Path(request.out)
    assert m.backend["name"] == "inductor" and len(m.artifacts) == 3
    assert m.weights.kind == "model" and list(m.weights.files) == ["weights/fp32.safetensors"]
    assert sorted(m.weights.graphs) == sorted(m.artifacts)
    from safetensors import safe_open

    with safe_open(out / "weights" / "fp32.safetensors", "pt") as handle:
        stored = set(handle.keys())
    for record in m.artifacts.values():
        assert record.shared == ["weights/fp32.safetensors"]
        packages = [f for f in record.files if f.endswith(".pt2")]
        maps = [f for f in record.files if f.endswith(".weights.json")]
        assert len(packages) == 1 and len(maps) == 1
        keys = {e["key"] for e in json.loads((out / maps[0]).read_text())["constants"].values()}
        assert keys and keys <= stored  # every constant of every package is a tensor of the one shared file
        assert record.validation["cosine"] > 0.99999
    from ditcache.export.export_engines import ExportRequest, export_engines

    again = export_engines(ExportRequest(**{**request.__dict__}), log=lambda m: None, progress=False)
    assert again.rebuilt == []  # packages and the weights file reused: nothing compiles again


@pytest.mark.slow
def test_new_process_runs_packages_without_compiling(aot_engines, tmp_path, tiny_model, tiny_spec):
    request, report = aot_engines
    cache = tmp_path / "inductor-cache"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    latents = tmp_path / "latents.pt"
    done = subprocess.run([sys.executable, "-c", _CHILD, str(request.out), str(latents), ",".join(map(str, LABELS))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not cache.exists() or not any(cache.rglob("*")), "the child compiled something into its inductor cache"
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest
    from ditcache.graphs.plan import Plan

    plan = Plan.from_dict(report.manifest.plan)
    want = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, plan), tiny_spec,
                            SampleRequest(LABELS, steps=plan.num_steps, seed=5))
    got = torch.load(latents)
    # 3 images through batch-2 packages (chunks of model batch 4, the last padded) == the eager runtime at batch 6
    torch.testing.assert_close(got, want, rtol=0, atol=3e-4)


@pytest.mark.slow
def test_variant_packages_share_one_copy_of_the_weights(aot_engines):
    from ditcache.export.load import _shared_weights
    from ditcache.export.manifest import Manifest
    from ditcache.graphs.weights import sha256_file

    request, report = aot_engines
    out = Path(request.out)
    manifest = Manifest.read(out)
    shared = _shared_weights(out, manifest, CPU)
    backend = InductorAOTBackend()
    pointers: dict[str, set[int]] = {}
    for name, record in manifest.artifacts.items():
        def specs(items):
            return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in items)

        graph = GraphSpec(name, None, specs(record.inputs), specs(record.outputs))
        run = backend.load(graph, CPU, [out / f for f in record.files], weights=shared)
        constants, _ = run.constants
        entries = json.loads(next(out.glob(f"artifacts/{name}-*/{name}.weights.json")).read_text())["constants"]
        for cname, tensor in constants.items():
            pointers.setdefault(entries[cname]["key"], set()).add(tensor.data_ptr())
    assert all(len(p) == 1 for p in pointers.values())  # one address per weight, whatever package uses it
    used_by_all = [k for k in pointers if k.startswith("pos_embed") or k.startswith("proj_out")]
    assert used_by_all, sorted(pointers)[:5]
    # the weights file is checked once per directory, not per graph: its checksum is in the manifest once
    assert manifest.weights.files["weights/fp32.safetensors"] == sha256_file(out / "weights" / "fp32.safetensors")


@pytest.mark.slow
def test_corrupted_package_is_refused(aot_engines, tmp_path):
    from ditcache.export.load import load_engines
    from ditcache.export.manifest import ManifestError

    request, _ = aot_engines
    copy = tmp_path / "eng"
    shutil.copytree(request.out, copy)
    package = next(copy.glob("artifacts/*/*.pt2"))
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="checksum mismatch"):
        load_engines(copy)
    shutil.rmtree(copy)
    shutil.copytree(request.out, copy)
    weights = copy / "weights" / "fp32.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(ManifestError, match="shared weights: checksum mismatch"):
        load_engines(copy)
