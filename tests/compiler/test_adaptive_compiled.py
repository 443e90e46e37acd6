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
    return compiled_adaptive_dispatcher(plan, flats, graphs, batch=batch), graphs


@pytest.mark.slow
def test_inductor_jit_adaptive_no_graph_breaks_no_recompiles(tiny_model, tiny_spec, tmp_path):
    """Through export-engines and the compiled runner (export/load.py), as a user runs it."""
    from torch._dynamo.utils import counters

    from ditcache.export.export_engines import ExportRequest, export_engines
    from ditcache.export.load import load_engines

    schedule = tmp_path / "a.yaml"
    schedule.write_text("".join(f"{k}: {v}\n" for k, v in {"kind": "adaptive", **POLICY}.items()))
    export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / "eng", backend="inductor-jit",
                                 random_weights=True, batch_size=2, validate=False), log=lambda m: None,
                   progress=False)
    dispatcher = load_engines(tmp_path / "eng").dispatcher
    request = SampleRequest((1, 2), STEPS, 4.0, 3, "ddim")
    breaks = lambda: int(sum(counters["graph_break"].values()))  # noqa: E731
    graphs = lambda: int(counters["stats"].get("unique_graphs", 0))  # noqa: E731
    before_breaks, before_graphs = breaks(), graphs()
    first = sample(dispatcher, tiny_spec, request)  # compiles the three programs
    warm_graphs = graphs()
    dispatcher.reset()
    again = sample(dispatcher, tiny_spec, request)
    assert breaks() == before_breaks, dict(counters["graph_break"])
    assert warm_graphs - before_graphs == 3  # one whole graph per program
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
    dispatcher, _ = compiled("onnxruntime", tiny_model, tiny_spec, 2, tmp_path)
    ours = sample(dispatcher, tiny_spec, request)
    want, programs = reference_run(tiny_model, tiny_spec, request)
    assert [d.program for d in dispatcher.decisions] == programs and "replay" in programs
    torch.testing.assert_close(ours, want, rtol=1e-3, atol=1e-4)


def test_pixart_onnxruntime_adaptive_matches_the_reference(pixart_model, pixart_spec, pixart_prompts, tmp_path):
    """PixArt's probe graph hands the head's embeddings on to the continuations as explicit outputs."""
    pytest.importorskip("onnxruntime")
    request = SampleRequest(steps=STEPS, guidance_scale=4.5, seed=5, scheduler="dpm++", prompts=pixart_prompts)
    dispatcher, graphs = compiled("onnxruntime", pixart_model, pixart_spec, 4, tmp_path)
    probe, replay = graphs["adaptive.probe"], graphs["adaptive.replay"]
    assert probe.output_names[0] == "h" and probe.output_names[-2:] == ("probe", "signal")
    carried = probe.output_names[1:-2]  # the head's timestep embedding, caption tokens, mask bias
    assert len(carried) == 4 and set(carried) <= set(replay.input_names)
    ours = sample(dispatcher, pixart_spec, request)
    want, programs = reference_run(pixart_model, pixart_spec, request)
    assert [d.program for d in dispatcher.decisions] == programs and "replay" in programs
    scale = float(want.abs().max())  # fp32 ONNX Runtime vs eager, through 8 multistep DPM++ steps
    torch.testing.assert_close(ours, want, rtol=1e-3, atol=2e-4 * scale)
