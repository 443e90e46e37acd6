"""Adaptive programs compiled as whole graphs (inductor-jit, onnxruntime): the same decisions and samples as the
independent reference loop, 0 graph breaks and 0 steady-state recompiles."""

from __future__ import annotations

import pytest
import torch
from adaptive_reference import AdaptiveReference

from ditcache.compiler.adaptive_specs import adaptive_graphs
from ditcache.compiler.backend import BuildSettings, get_backend
from ditcache.compiler.runtime.decider import compiled_adaptive_dispatcher
from ditcache.compiler.runtime.sampling import SampleRequest, sample
from ditcache.graphs import parts_for
from ditcache.graphs.adaptive import AdaptivePlan, AdaptivePolicy

STEPS = 8
POLICY = dict(steps=STEPS, threshold=0.3, signal="first-block", warmup=2, final=1, max_consecutive=2)


def reference_run(model, spec, request):
    p = AdaptivePolicy(**POLICY)
    reference = AdaptiveReference(model, steps=STEPS, threshold=p.threshold, signal=p.signal, warmup=p.warmup,
                                  final=p.final, cap=p.max_consecutive)
    return sample(reference, spec, request), reference.programs


def compiled(backend: str, model, spec, batch: int, tmp_path):
    plan = AdaptivePlan.build(AdaptivePolicy(**POLICY), spec.num_blocks)
    graphs = {g.name: g for g in adaptive_graphs(parts_for(model, spec), plan, "variant", batch, torch.float32)}
    chosen, settings = get_backend(backend), BuildSettings()
    flats = {}
    for name, graph in graphs.items():
        folder = tmp_path / name
        folder.mkdir()
        files = chosen.build(graph, settings, folder)
        flats[name] = chosen.load(graph, settings, files)
    return compiled_adaptive_dispatcher(plan, flats, graphs, batch=batch)


@pytest.mark.slow
def test_inductor_jit_adaptive_no_graph_breaks_no_recompiles(tiny_model, tiny_spec, tmp_path):
    from torch._dynamo.utils import counters

    request = SampleRequest((1, 2), STEPS, 4.0, 3, "ddim")
    dispatcher = compiled("inductor-jit", tiny_model, tiny_spec, 4, tmp_path)
    breaks = lambda: int(sum(counters["graph_break"].values()))  # noqa: E731
    graphs = lambda: int(counters["stats"].get("unique_graphs", 0))  # noqa: E731
    before_breaks = breaks()
    first = sample(dispatcher, tiny_spec, request)  # compiles the three programs
    warm_graphs = graphs()
    dispatcher.reset()
    again = sample(dispatcher, tiny_spec, request)
    assert breaks() == before_breaks, dict(counters["graph_break"])
    assert graphs() == warm_graphs  # steady state: nothing recompiled
    want, programs = reference_run(tiny_model, tiny_spec, request)
    assert [d.program for d in dispatcher.decisions] == programs and "replay" in programs
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(first, want, rtol=1e-3, atol=1e-4)


def test_onnxruntime_adaptive_matches_the_reference_in_chunks(tiny_model, tiny_spec, tmp_path):
    """Engines of model batch 2 run a request of 2 images under guidance (model batch 4) in two chunks: the batch rule
    sees every row of the call."""
    pytest.importorskip("onnxruntime")
    request = SampleRequest((1, 2), STEPS, 4.0, 3, "ddim")
    dispatcher = compiled("onnxruntime", tiny_model, tiny_spec, 2, tmp_path)
    ours = sample(dispatcher, tiny_spec, request)
    want, programs = reference_run(tiny_model, tiny_spec, request)
    assert [d.program for d in dispatcher.decisions] == programs and "replay" in programs
    torch.testing.assert_close(ours, want, rtol=1e-3, atol=1e-4)
