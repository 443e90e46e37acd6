"""Engines of the flow families (FLUX, SD3, Wan; tiny sizes): export-engines on eager, ONNX Runtime and inductor
(AOTInductor packages; JIT) and the compiled runner (export/load.py, ``ditcache run``) sample like the eager
runtime; FLUX.1-dev's engines are built for the images' batch (its guidance is a model input), SD3's and Wan's for
the doubled CFG batch; cached runs differ from full ones. Compiled builds are slow here: marked slow, one tiny
schedule each, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ditcache.cli import main
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.export.export_engines import ExportRequest, export_engines
from ditcache.export.load import load_engines
from ditcache.graphs import full_schedule, get_spec, load_model, load_schedule
from ditcache.graphs.planning import plan_for

sys.path.insert(0, str(Path(__file__).parents[1] / "compiler"))
from test_flow_sampling import prompts_for  # noqa: E402

STEPS = 4
DELTA = f"kind: delta-dit\nsteps: {STEPS}\nboundary: 2\ninterval: 2\ncached_blocks: 2\n"
FULL = f"kind: full\nsteps: {STEPS}\n"
GUIDANCE = {"flux-tiny": 3.5, "sd3-tiny": 5.0, "wan-tiny": 5.0}
ORT_RTOL = 1e-4  # fp32 compiled vs eager, relative to the latents' max abs


@pytest.fixture(scope="session")
def engines(tmp_path_factory):
    """export(model, backend, schedule text[, granularity]) -> (directory, schedule path), each built once per
    session; a schedule naming ``scale_shift: ss.safetensors`` gets the per-stream tables of :func:`stream_tables`."""
    built = {}

    def get(model: str, backend: str, schedule: str, granularity: str | None = None):
        key = (model, backend, schedule, granularity)
        if key not in built:
            root = tmp_path_factory.mktemp(f"{model}-{backend}")
            path = root / "schedule.yaml"
            path.write_text(schedule)
            spec = get_spec(model)
            if "ss.safetensors" in schedule:
                save_file(stream_tables(spec), str(root / "ss.safetensors"), metadata={"layout": "per-stream",
                                                                                        "streams": "text,image"})
            export_engines(ExportRequest(model=model, schedule=path, out=root / "eng", backend=backend,
                                         random_weights=True, batch_size=2, granularity=granularity,
                                         guidance=spec.cfg_batch(GUIDANCE[model])),
                           log=lambda m: None, progress=False)
            built[key] = (root / "eng", path)
        return built[key]

    return get


CORRECTED = (f"kind: block-cache\nsteps: {STEPS}\nrecompute: {{0: [0, 2], 1: [0, 3]}}\n"
             f"scale_shift: ss.safetensors\n")  # SD3: blocks 0 and 1 of 3 replayed with per-stream scale/shift


def stream_tables(spec) -> dict[str, torch.Tensor]:
    """(steps, 2, D) scale/shift of blocks 0 and 1, text and image rows drawn apart."""
    gen = torch.Generator().manual_seed(3)
    spread = torch.tensor([0.3, 0.1])[None, :, None]
    tables = {}
    for i in (0, 1):
        tables[f"scale.b{i}"] = 1 + spread * torch.randn(STEPS, 2, spec.hidden_size, generator=gen)
        tables[f"shift.b{i}"] = spread * torch.randn(STEPS, 2, spec.hidden_size, generator=gen)
    return tables


def eager_latents(model_name: str, schedule_path: Path, prompts):
    """The eager runtime on the same random weights: (the schedule's latents, the full schedule's)."""
    spec = get_spec(model_name)
    model, _ = load_model(spec, random_weights=True)
    request = SampleRequest((), STEPS, GUIDANCE[model_name], 0, spec.sampler, prompts=prompts)
    plans = [plan_for(load_schedule(schedule_path), spec), plan_for(full_schedule(STEPS), spec)]
    return [sample_with_plan(eager_dispatcher(model, spec, p), spec, request) for p in plans], request


def check_engines(engines, model: str, backend: str, schedule: str, rtol: float, granularity: str | None = None):
    directory, schedule_path = engines(model, backend, schedule, granularity)
    spec = get_spec(model)
    prompts = prompts_for(spec)
    (want, full), request = eager_latents(model, schedule_path, prompts)
    loaded = load_engines(directory, images=2, guidance=spec.cfg_batch(GUIDANCE[model]))
    assert loaded.manifest.batch["model_batch"] == request.denoiser_batch(spec)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    scale = want.abs().max()
    torch.testing.assert_close(got, want, rtol=0, atol=rtol * scale if rtol else 0)
    if schedule in (DELTA, CORRECTED):
        assert (got - full).abs().max() > 1e-3 * scale  # the engines really replay
    return loaded


def check_per_stream_engines(engines, backend: str, granularity: str, rtol: float) -> None:
    """SD3's per-stream corrected block caching: the engines equal the eager runtime, whose per-stream replay the
    graphs tests hold against the reference, and a shared table (the image row in both) samples otherwise."""
    loaded = check_engines(engines, "sd3-tiny", backend, CORRECTED, rtol, granularity)
    record = loaded.manifest.corrections
    assert record["streams"] == {"names": ["text", "image"], "tokens": [8, 16]}
    if granularity == "variant":  # the graphs take the (2, D) tables and expand them inside
        shapes = [t["shape"] for r in loaded.manifest.artifacts.values() for t in r.inputs
                  if t["name"].startswith(("scale_", "shift_"))]
        assert shapes and all(shape == [2, 32] for shape in shapes)
    spec = get_spec("sd3-tiny")
    request = SampleRequest((), STEPS, GUIDANCE["sd3-tiny"], 0, spec.sampler, prompts=prompts_for(spec))
    tables = loaded.dispatcher.corrections
    shared = {k: v[:, 1:].expand_as(v).contiguous() for k, v in tables.items()}
    dispatcher = loaded.dispatcher.fresh()
    dispatcher.corrections = shared
    got, other = (sample_with_plan(d, loaded.spec, request) for d in (loaded.dispatcher, dispatcher))
    assert (got - other).abs().max() > 1e-3 * got.abs().max()


def test_eager_engines_with_per_stream_scale_shift(engines):
    check_per_stream_engines(engines, "eager", "variant", 0.0)


@pytest.mark.parametrize("model", sorted(GUIDANCE))
def test_eager_engines_sample_like_the_runtime(engines, model):
    loaded = check_engines(engines, model, "eager", DELTA, 0.0)
    assert loaded.manifest.batch["cfg"] == (model != "flux-tiny")  # FLUX.1-dev: one batch, guidance as an input


def test_compiled_runner_cli_on_flux_engines(engines, tmp_path):
    """``ditcache run --engines`` with an embeddings file: FLUX.1-dev at guidance 3.5 loads its single-batch engines."""
    directory, schedule_path = engines("flux-tiny", "eager", DELTA)
    spec = get_spec("flux-tiny")
    prompts = prompts_for(spec)
    prompts.save(tmp_path / "p.safetensors")
    assert main(["run", "--engines", str(directory), "--embeddings", str(tmp_path / "p.safetensors"),
                 "--guidance", "3.5", "--out", str(tmp_path / "o")]) == 0
    latents = torch.load(tmp_path / "o" / "latents.pt")
    (want, _), _ = eager_latents("flux-tiny", schedule_path, prompts)
    torch.testing.assert_close(latents, want, rtol=1e-5, atol=1e-5)  # the CLI's thread count rounds differently


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(GUIDANCE))
def test_onnxruntime_engines_sample_like_the_runtime(engines, model):
    pytest.importorskip("onnxruntime")
    check_engines(engines, model, "onnxruntime", DELTA, ORT_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["variant", "segment"])  # segment: the host expands the recorded streams
def test_onnxruntime_engines_with_per_stream_scale_shift(engines, granularity):
    pytest.importorskip("onnxruntime")
    check_per_stream_engines(engines, "onnxruntime", granularity, ORT_RTOL)


@pytest.mark.slow
def test_inductor_aot_engines_sample_like_the_runtime(engines):
    """AOTInductor packages of FLUX's full schedule (one graph: head, 2 dual + 2 single blocks, tail)."""
    check_engines(engines, "flux-tiny", "inductor", FULL, ORT_RTOL)


@pytest.mark.slow
def test_inductor_jit_engines_sample_like_the_runtime(engines):
    """torch.compile at load of Wan's Δ-DiT variants (its two CFG branches as one batch)."""
    check_engines(engines, "wan-tiny", "inductor-jit", DELTA, ORT_RTOL)


def test_wan_engines_at_another_size_and_frame_count(tmp_path):
    """``export-engines --resolution 48 --frames 5``: Wan engines for 2 latent frames of 6x6; the manifest records
    both and the loaded spec (and its samples) follow."""
    from ditcache.graphs.registry import at_resolution

    (tmp_path / "s.yaml").write_text(DELTA)
    assert main(["export-engines", "--model", "wan-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--backend", "eager", "--out", str(tmp_path / "eng"), "--batch-size", "2", "--resolution", "48",
                 "--frames", "5", "--quiet"]) == 0
    loaded = load_engines(tmp_path / "eng", images=2, guidance=True)
    assert loaded.spec.latent_shape == (4, 2, 6, 6)
    assert loaded.manifest.model["resolution"] == 48 and loaded.manifest.model["frames"] == 5
    spec = at_resolution(get_spec("wan-tiny"), 48, 5)
    model, _ = load_model(spec, random_weights=True)
    request = SampleRequest((), STEPS, 5.0, 0, spec.sampler, prompts=prompts_for(spec))
    want = sample_with_plan(eager_dispatcher(model, spec, plan_for(load_schedule(tmp_path / "s.yaml"), spec)), spec,
                            request)
    got = sample_with_plan(loaded.dispatcher, loaded.spec, request)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == (2, 4, 2, 6, 6)
