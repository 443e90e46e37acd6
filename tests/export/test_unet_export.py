"""U-Nets through export-engines and the compiled runner (eager, ONNX Runtime, one inductor run), with per-channel
scale/shift inputs of NCHW shapes, and calibrate -> auto-schedule -> export-engines -> runner on the same code
path as the DiT."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ditcache.cli import main
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.compiler.calibration.curves import calibrate, save_curves
from ditcache.compiler.runtime.prompts import PromptEmbeddings
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.graphs import costs_for, get_spec, load_model, load_schedule, parts_for
from ditcache.graphs.planning import plan_for

STEPS = 4
RECOMPUTE = {0: [0, 2], 2: [0], 3: [0, 1, 3]}  # unet-tiny: down (16x8x8), up, up (16x8x8)


def prompts(images: int, seed: int) -> PromptEmbeddings:
    """Random CLIP-shaped embeddings (77 x 24 for unet-tiny) and a negative prompt's."""
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(images + 1, 77, 24, generator=gen)
    mask = torch.ones(images + 1, 77, dtype=torch.long)
    return PromptEmbeddings(embeds[:images], mask[:images], embeds[images:], mask[images:])


@pytest.fixture(scope="module")
def tiny():
    spec = get_spec("unet-tiny")
    model, _ = load_model(spec, random_weights=True)
    return spec, model


@pytest.fixture()
def corrected_schedule(tmp_path, tiny) -> Path:
    """A block-cache schedule with random per-channel scale/shift, (steps, C, 1, 1) per replayed layer."""
    from safetensors.torch import save_file

    spec, model = tiny
    parts = parts_for(model, spec)
    gen = torch.Generator().manual_seed(7)
    tensors = {}
    for i in RECOMPUTE:
        tensors[f"scale.b{i}"] = 1 + 0.1 * torch.randn(STEPS, *parts.channel_shape(i), generator=gen)
        tensors[f"shift.b{i}"] = 0.1 * torch.randn(STEPS, *parts.channel_shape(i), generator=gen)
    save_file(tensors, tmp_path / "ss.safetensors")
    path = tmp_path / "bc.yaml"
    path.write_text(f"kind: block-cache\nsteps: {STEPS}\nrecompute: {RECOMPUTE}\nscale_shift: ss.safetensors\n")
    return path


@pytest.mark.parametrize("backend,granularity", [("eager", "segment"), ("onnxruntime", "variant"),
                                                 ("onnxruntime", "segment")])
def test_exported_engines_sample_like_the_eager_runtime(tmp_path, tiny, corrected_schedule, backend, granularity):
    if backend == "onnxruntime":
        pytest.importorskip("onnx", reason="the onnxruntime backend needs `pip install ditcache[onnx]`")
        pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs `pip install ditcache[onnx]`")
    spec, model = tiny
    report = export_engines(ExportRequest(model="unet-tiny", schedule=corrected_schedule, out=tmp_path / "eng",
                                          backend=backend, random_weights=True, batch_size=2,
                                          granularity=granularity), log=lambda m: None, progress=False)
    names = [g.name for g in report.graphs]
    if granularity == "segment":  # the links between attention layers are graphs of their own
        assert "segment.link.1" in names and "segment.head" in names and "segment.tail" in names
    loaded = load_engines(tmp_path / "eng", images=2, guidance=True, schedule=load_schedule(corrected_schedule))
    assert loaded.plan.corrected
    request = SampleRequest(steps=STEPS, guidance_scale=7.5, seed=3, prompts=prompts(2, 0))
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want = sample_with_plan(eager_dispatcher(model, spec, loaded.plan), spec, request)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    full = sample(model_denoiser(model), spec, request)
    assert (got - full).abs().max() > 1e-3, "the cached run must differ from the full one"


@pytest.mark.slow
def test_inductor_unet(tmp_path, tiny):
    """The one inductor run (AOTInductor packages; compiles are slow on 2 cores): two variant graphs of unet-tiny."""
    spec, model = tiny
    schedule = tmp_path / "bc.yaml"
    schedule.write_text("kind: block-cache\nsteps: 3\nrecompute: {1: [0]}\n")
    export_engines(ExportRequest(model="unet-tiny", schedule=schedule, out=tmp_path / "eng", backend="inductor",
                                 random_weights=True, batch_size=1, granularity="variant", validate=False),
                   log=lambda m: None, progress=False)
    loaded = load_engines(tmp_path / "eng", images=1)
    request = SampleRequest(steps=3, guidance_scale=7.5, seed=1, prompts=prompts(1, 1))
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    want = sample_with_plan(eager_dispatcher(model, spec, loaded.plan), spec, request)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_calibrate_auto_schedule_export_run(tmp_path, tiny, capsys):
    """unet-tiny: change curves of the 4 attention layers -> threshold for a target speedup -> engines -> runner."""
    spec, model = tiny
    requests = [SampleRequest(steps=6, guidance_scale=7.5, seed=s, prompts=prompts(2, s)) for s in (0, 1)]
    curves = calibrate(model, spec, requests, "random-seed-0")
    assert curves.num_blocks == 4 and curves.count == 8  # 2 seeds x model batch 4 (2 prompts, doubled by guidance)
    assert all(row[0] == 0 for row in curves.mean) and all(v > 0 for row in curves.mean for v in row[1:])
    save_curves(curves, tmp_path / "curves.json")
    assert main(["auto-schedule", "--curves", str(tmp_path / "curves.json"), "--target-speedup", "1.15",
                 "--out", str(tmp_path / "s.yaml")]) == 0
    assert "on unet-tiny" in capsys.readouterr().out
    plan = plan_for(load_schedule(tmp_path / "s.yaml"), spec)
    assert plan.theoretical_speedup(costs_for(spec)) >= 1.15
    assert main(["export-engines", "--model", "unet-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--backend", "eager", "--out", str(tmp_path / "eng"), "--batch-size", "2", "--quiet"]) == 0
    loaded = load_engines(tmp_path / "eng", schedule=load_schedule(tmp_path / "s.yaml"))
    request = SampleRequest(steps=6, guidance_scale=7.5, seed=5, prompts=prompts(2, 5))
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    torch.testing.assert_close(got, sample_with_plan(eager_dispatcher(model, spec, loaded.plan), spec, request))
    assert (got - sample(model_denoiser(model), spec, request)).abs().max() > 1e-4


def test_cli_calibrate_schedule_export_run_class_conditional(tmp_path, capsys):
    """unet-fmnist (class labels) through the CLI alone: calibrate, auto-schedule, export-engines, run."""
    curves, schedule, engines = tmp_path / "c.json", tmp_path / "s.yaml", tmp_path / "eng"
    assert main(["calibrate", "--model", "unet-fmnist", "--random-weights", "--steps", "5", "--seeds", "0",
                 "--classes", "1", "7", "--out", str(curves), "--quiet"]) == 0
    assert "change curves of 6 blocks" in capsys.readouterr().out
    assert main(["auto-schedule", "--curves", str(curves), "--threshold", "0.5", "--out", str(schedule)]) == 0
    assert main(["export-engines", "--model", "unet-fmnist", "--random-weights", "--schedule", str(schedule),
                 "--backend", "eager", "--out", str(engines), "--batch-size", "2", "--quiet"]) == 0
    assert main(["run", "--engines", str(engines), "--classes", "3", "4", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "grid.png").is_file()


def test_tensorrt_unet_segments(tmp_path, tiny):
    """TensorRT engines of unet-tiny's segments (links, skips and NCHW scale/shift inputs); needs TensorRT and a
    GPU, so it skips on this project's CPU machines."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install ditcache[tensorrt] on a CUDA machine)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need an NVIDIA GPU")
    spec, model = tiny
    schedule = tmp_path / "bc.yaml"
    schedule.write_text(f"kind: block-cache\nsteps: {STEPS}\nrecompute: {RECOMPUTE}\n")
    export_engines(ExportRequest(model="unet-tiny", schedule=schedule, out=tmp_path / "eng", backend="tensorrt",
                                 random_weights=True, batch_size=2, granularity="segment", device="cuda"),
                   log=lambda m: None, progress=False)
    loaded = load_engines(tmp_path / "eng", images=1)
    request = SampleRequest(steps=STEPS, guidance_scale=7.5, seed=3, prompts=prompts(1, 0))
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request, device="cuda")
    want = sample_with_plan(eager_dispatcher(copy.deepcopy(model).to("cuda"), spec, loaded.plan), spec, request,
                            device="cuda")
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=1e-3, atol=1e-3)
