"""inductor-jit (torch.compile at first call) end to end on dit-tiny: export (compile + validate), load,
sample == eager runtime."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.graphs import get_spec, load_model

SCHEDULES = {
    "delta-dit": "kind: delta-dit\nsteps: 4\nboundary: 2\ninterval: 2\ncached_blocks: 2\n",
    "full": "kind: full\nsteps: 3\n",
    "block-cache": "kind: block-cache\nsteps: 4\nrecompute: {1: [0, 2], 2: [0, 3]}\n",
}


def roundtrip(tmp_path, kind: str, granularity: str):
    schedule = tmp_path / f"{kind}.yaml"
    schedule.write_text(SCHEDULES[kind])
    report = export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / "eng",
                                          backend="inductor-jit", random_weights=True, batch_size=2,
                                          granularity=granularity), log=lambda m: None, progress=False)
    assert all(g.validation["cosine"] > 0.99999 for g in report.graphs)
    loaded = load_engines(tmp_path / "eng", images=2)
    request = SampleRequest((5, 6), steps=loaded.plan.num_steps, seed=3)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    want = sample_with_plan(eager_dispatcher(model, spec, loaded.plan), spec, request)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    return got


def test_inductor_jit_delta_dit_segments(tmp_path):
    roundtrip(tmp_path, "delta-dit", "segment")


@pytest.mark.slow
@pytest.mark.parametrize("kind,granularity", [("full", "variant"), ("block-cache", "segment"),
                                              ("delta-dit", "variant"), ("block-cache", "variant")])
def test_inductor_jit_plans(tmp_path, kind, granularity):
    roundtrip(tmp_path, kind, granularity)


def test_inductor_jit_options_are_checked():
    from ditcache.compiler.backend import BuildSettings
    from ditcache.compiler.backends.inductor import InductorJITBackend

    backend = InductorJITBackend()
    assert backend.name == "inductor-jit" and not backend.writes_artifacts
    assert "cuda" in backend.unavailable_reason(BuildSettings(options={"cuda_graphs": True}))
    assert "unknown inductor-jit option" in backend.unavailable_reason(BuildSettings(options={"fast": 1}))
    assert backend.unavailable_reason(BuildSettings()) is None


def test_inputs_of_another_layout_do_not_recompile():
    """A stride-0 (expanded) input, then a contiguous one of the same shape: one graph, no recompile (the runner
    hands over both kinds when it runs a request in chunks)."""
    from torch._dynamo.utils import counters

    from ditcache.compiler.backend import BuildSettings, GraphSpec, TensorSpec, get_backend

    class Scale(torch.nn.Module):
        def forward(self, x, t):  # (B, 4), (B,)
            return (x * t[:, None],)

    graph = GraphSpec("probe", Scale(), (TensorSpec("x", (3, 4), "float32"), TensorSpec("t", (3,), "float32")),
                      (TensorSpec("y", (3, 4), "float32"),))
    run = get_backend("inductor-jit").load(graph, BuildSettings(), [])
    x = torch.randn(3, 4)
    torch._dynamo.reset()
    counters.clear()
    expanded = torch.tensor(2.0).expand(3)  # stride (0,)
    torch.testing.assert_close(run(x, expanded)[0], x * 2)
    torch.testing.assert_close(run(x, torch.full((3,), 3.0))[0], x * 3)
    assert counters["stats"]["unique_graphs"] == 1
