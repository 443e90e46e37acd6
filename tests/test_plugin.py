"""apply(pipe, ...) on a stock DiTPipeline: no other change to the user's code; remove() restores it."""

from __future__ import annotations

import pytest
import torch

import ditcache
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import parse_schedule
from ditcache.graphs.planning import plan_for

DELTA = {"kind": "delta-dit", "steps": 6, "boundary": 3, "interval": 2, "cached_blocks": 2}


@pytest.fixture()
def pipe(tiny_model, tiny_spec):
    from diffusers import AutoencoderKL, DiTPipeline

    from ditcache.compiler.runtime.sampling import make_scheduler

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    pipe = DiTPipeline(transformer=tiny_model, vae=vae, scheduler=make_scheduler("ddim", tiny_spec.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, steps=6, seed=4):
    return pipe(class_labels=[1, 2], num_inference_steps=steps, generator=torch.manual_seed(seed),
                output_type="pt").images


def test_apply_matches_ditcache_runtime_and_remove_restores(pipe, tiny_model, tiny_spec):
    stock = run(pipe)
    with ditcache.apply(pipe, DELTA) as handle:
        cached = run(pipe)
        again = run(pipe)  # caches reset between runs
        assert handle.denoiser.dispatcher.step == 6
    assert pipe.transformer is tiny_model
    torch.testing.assert_close(run(pipe), stock, rtol=0, atol=0)
    torch.testing.assert_close(again, cached, rtol=0, atol=0)
    assert (cached - stock).abs().max() > 1e-4

    plan = plan_for(parse_schedule(DELTA), tiny_spec)
    latents = sample_with_plan(eager_dispatcher(tiny_model, tiny_spec, plan), tiny_spec,
                               SampleRequest((1, 2), 6, 4.0, 4, "ddim"))
    with torch.no_grad():
        images = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(cached, images)


def test_full_schedule_through_apply_equals_stock(pipe):
    stock = run(pipe)
    handle = ditcache.apply(pipe, {"kind": "full", "steps": 6}, granularity="segment")
    torch.testing.assert_close(run(pipe), stock)
    handle.remove()


def test_wrong_step_count_and_double_apply(pipe):
    with ditcache.apply(pipe, DELTA):
        with pytest.raises(ValueError, match="schedule has 6 steps but the pipeline was called with num_inference_steps=5"):
            run(pipe, steps=5)
        with pytest.raises(ValueError, match="already applied"):
            ditcache.apply(pipe, DELTA)


def test_engine_backends_need_engines(pipe):
    with pytest.raises(ValueError, match="export-engines"):
        ditcache.apply(pipe, DELTA, backend="onnxruntime")


def test_apply_with_an_engine_directory(pipe, tmp_path):
    from ditcache.export.export_engines import ExportRequest, export_engines

    (tmp_path / "s.yaml").write_text("kind: delta-dit\nsteps: 6\nboundary: 3\ninterval: 2\ncached_blocks: 2\n")
    export_engines(ExportRequest(model="dit-tiny", schedule=tmp_path / "s.yaml", out=tmp_path / "eng",
                                 backend="eager", random_weights=True, batch_size=2), log=lambda m: None,
                   progress=False)
    with ditcache.apply(pipe, DELTA):
        want = run(pipe)
    with ditcache.apply(pipe, tmp_path / "s.yaml", engines=tmp_path / "eng"):
        torch.testing.assert_close(run(pipe), want)
    # any batch through the batch-2 engines (model batch 4): 1 and 3 images run in chunks, as the eager runtime
    for labels in ([1], [1, 2, 3]):
        with ditcache.apply(pipe, DELTA):
            want = pipe(class_labels=labels, num_inference_steps=6, generator=torch.manual_seed(4), output_type="pt")
        with ditcache.apply(pipe, tmp_path / "s.yaml", engines=tmp_path / "eng"):
            got = pipe(class_labels=labels, num_inference_steps=6, generator=torch.manual_seed(4), output_type="pt")
        torch.testing.assert_close(got.images, want.images, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_apply_inductor(pipe):
    with ditcache.apply(pipe, DELTA):
        want = run(pipe)
    with ditcache.apply(pipe, DELTA, backend="inductor-jit", granularity="segment"):
        torch.testing.assert_close(run(pipe), want, rtol=1e-4, atol=1e-4)
