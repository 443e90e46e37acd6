"""PixArt-α engines: text conditioning enters every graph as inputs (shapes in the manifest); exported engines
(eager, ONNX Runtime; inductor in a slow test) sample like the eager runtime, and cached runs differ from full."""

from __future__ import annotations

import json

import pytest
import torch

from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.export.manifest import MANIFEST_NAME
from ditcache.graphs import full_schedule, get_spec, load_model, load_schedule
from ditcache.graphs.planning import plan_for

SCHEDULES = {
    # steps 0..5: full+rec-back, back-skipped, full, full, full+rec-front, front-skipped
    "delta": "kind: delta-dit\nsteps: 6\nboundary: 3\ninterval: 2\ncached_blocks: 2\n",
    # blocks 1 and 2 replay their residual between recomputes
    "block-cache": "kind: block-cache\nsteps: 6\nrecompute: {1: [0, 2, 4], 2: [0, 3]}\n",
}
ORT_RTOL = 1e-4  # fp32 ONNX Runtime vs eager, relative to the latents' max abs (observed ~1e-6)


def export(tmp_path, model: str, kind: str, backend: str, granularity: str, out: str = "eng"):
    schedule = tmp_path / f"{kind}.yaml"
    schedule.write_text(SCHEDULES[kind])
    report = export_engines(ExportRequest(model=model, schedule=schedule, out=tmp_path / out, backend=backend,
                                          random_weights=True, batch_size=2, granularity=granularity),
                            log=lambda m: None, progress=False)
    return schedule, report


def reference(model_name: str, plan, request):
    """The eager runtime on the same random weights: (the plan's latents, the full schedule's latents)."""
    spec = get_spec(model_name)
    model, _ = load_model(spec, random_weights=True)
    cached = sample_with_plan(eager_dispatcher(model, spec, plan), spec, request)
    full = sample_with_plan(eager_dispatcher(model, spec, plan_for(full_schedule(plan.num_steps), spec)),
                            spec, request)
    return cached, full


def request_for(prompts) -> SampleRequest:
    return SampleRequest(steps=6, guidance_scale=4.5, seed=2, scheduler="dpm++", prompts=prompts)


@pytest.mark.parametrize("model", ["pixart-tiny", "pixart-tiny-ms"])
@pytest.mark.parametrize("granularity", ["variant", "segment"])
@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_eager_engines_take_text_inputs_and_sample_like_the_runtime(tmp_path, pixart_prompts, model, granularity,
                                                                    kind):
    schedule, report = export(tmp_path, model, kind, "eager", granularity)
    manifest = json.loads((tmp_path / "eng" / MANIFEST_NAME).read_text())
    first = "segment.head" if granularity == "segment" else next(g for g in manifest["artifacts"]
                                                                 if g.startswith("variant."))
    inputs = {t["name"]: t for t in manifest["artifacts"][first]["inputs"]}
    assert inputs["encoder_hidden_states"]["shape"] == [4, 8, 32]  # (2 images x CFG, tokens, T5 channels)
    assert inputs["encoder_attention_mask"] == {"name": "encoder_attention_mask", "shape": [4, 8], "dtype": "int64"}
    assert ("resolution" in inputs) == (model == "pixart-tiny-ms")
    if model == "pixart-tiny-ms":
        assert inputs["resolution"]["shape"] == [4, 2] and inputs["aspect_ratio"]["shape"] == [4, 1]
    if granularity == "segment":  # blocks read the head's caption tokens and mask bias, not the raw embeddings
        block = next(g for g in manifest["artifacts"] if g.startswith("segment.blocks."))
        assert [t["name"] for t in manifest["artifacts"][block]["inputs"]] == ["h", "temb", "context", "encoder_bias"]
        assert [t["name"] for t in manifest["artifacts"]["segment.head"]["outputs"]] == [
            "h", "temb", "embedded_timestep", "context", "encoder_bias"]

    loaded = load_engines(tmp_path / "eng", images=2, guidance=True, schedule=load_schedule(schedule))
    request = request_for(pixart_prompts)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want, full = reference(model, loaded.plan, request)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got - full).abs().max() > 1e-3 * full.abs().max()  # the cached run really differs


@pytest.fixture(scope="module")
def onnx_available():
    pytest.importorskip("onnx", reason="the onnxruntime backend needs `pip install ditcache[onnx]`")
    pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs `pip install ditcache[onnx]`")


@pytest.mark.parametrize("kind,granularity", [("delta", "variant"), ("block-cache", "segment")])
def test_onnxruntime_engines_sample_like_the_runtime(tmp_path, onnx_available, pixart_prompts, kind, granularity):
    schedule, report = export(tmp_path, "pixart-tiny", kind, "onnxruntime", granularity)
    assert all(g.validation["cosine"] > 0.99999 for g in report.graphs)
    loaded = load_engines(tmp_path / "eng", images=2, guidance=True, schedule=load_schedule(schedule))
    request = request_for(pixart_prompts)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want, full = reference("pixart-tiny", loaded.plan, request)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=ORT_RTOL, atol=ORT_RTOL * scale)
    assert (got - full).abs().max() > 1e-3 * scale


def test_cli_export_and_run_with_embeddings(tmp_path, pixart_prompts, capsys):
    from ditcache.cli import main

    (tmp_path / "s.yaml").write_text(SCHEDULES["delta"])
    pixart_prompts.save(tmp_path / "e.safetensors")
    assert main(["export-engines", "--model", "pixart-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--backend", "eager", "--out", str(tmp_path / "eng"), "--batch-size", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", "--engines", str(tmp_path / "eng"), "--embeddings", str(tmp_path / "e.safetensors"),
                 "--seed", "2", "--out", str(tmp_path / "o")]) == 0
    assert "2 images, 6 dpm++ steps" in capsys.readouterr().out
    got = torch.load(tmp_path / "o" / "latents.pt")
    want, _ = reference("pixart-tiny", load_engines(tmp_path / "eng").plan, request_for(pixart_prompts))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", "1", "2", "--out", str(tmp_path / "o")]) == 2
    assert "text-conditioned" in capsys.readouterr().err


def test_lcm_engines_default_to_no_guidance(tmp_path, capsys):
    """PixArt-α-LCM samples without guidance: export-engines builds the undoubled batch unless asked."""
    from ditcache.cli import build_parser
    from ditcache.cli.export import export_guidance

    args = build_parser().parse_args(["export-engines", "--model", "pixart-lcm-1024", "--schedule", "s.yaml",
                                      "--out", "e"])
    assert export_guidance(args) is False
    args = build_parser().parse_args(["export-engines", "--model", "pixart-256", "--schedule", "s.yaml", "--out", "e"])
    assert export_guidance(args) is True


@pytest.mark.slow
def test_inductor_engines_sample_like_the_runtime(tmp_path, pixart_prompts):
    schedule, _ = export(tmp_path, "pixart-tiny", "delta", "inductor", "segment")
    loaded = load_engines(tmp_path / "eng", images=2, schedule=load_schedule(schedule))
    request = request_for(pixart_prompts)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want, full = reference("pixart-tiny", loaded.plan, request)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)
    assert (got - full).abs().max() > 1e-3 * scale
