"""apply(pipe, adaptive schedule): the stock DiTPipeline samples what it samples with the independent reference loop
as its transformer, in process and from an engine directory; the decisions are recorded per run."""

from __future__ import annotations

import pytest
import torch
from adaptive_reference import AdaptiveReference
from torch import nn

import ditcache

STEPS = 8
ADAPTIVE = {"kind": "adaptive", "steps": STEPS, "signal": "first-block", "threshold": 0.3, "warmup": 2, "final": 1,
            "max_consecutive": 2}


class ReferenceTransformer(nn.Module):
    """The reference loop with the call signature DiTPipeline uses."""

    def __init__(self, model, reference: AdaptiveReference):
        super().__init__()
        self.model, self.reference = model, reference

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def forward(self, hidden_states, timestep=None, class_labels=None, return_dict=True, **_):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        t = torch.as_tensor(timestep).reshape(-1).float().expand(hidden_states.shape[0])
        out = self.reference({"x": hidden_states, "timestep": t, "class_labels": class_labels})
        return Transformer2DModelOutput(sample=out)


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


def run(pipe, seed=4):
    return pipe(class_labels=[1, 2], num_inference_steps=STEPS, generator=torch.manual_seed(seed),
                output_type="pt").images


def final_latents(pipe) -> torch.Tensor:
    """The latents of a run before the VAE (the tiny random VAE flattens most differences)."""
    seen = []
    step = pipe.scheduler.step

    def recording(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(out.prev_sample if hasattr(out, "prev_sample") else out[0])
        return out

    pipe.scheduler.step = recording
    try:
        run(pipe)
    finally:
        del pipe.scheduler.step
    return seen[-1]


def reference_images(pipe, model):
    reference = AdaptiveReference(model, steps=STEPS, threshold=0.3, warmup=2, final=1, cap=2)
    pipe.transformer = ReferenceTransformer(model, reference)
    try:
        return run(pipe), reference.programs
    finally:
        pipe.transformer = model


def test_apply_adaptive_matches_the_reference_loop(pipe, tiny_model):
    stock = run(pipe)
    want, programs = reference_images(pipe, tiny_model)
    assert "replay" in programs
    with ditcache.apply(pipe, ADAPTIVE) as handle:
        got = run(pipe)
        decisions = [d.program for d in handle.denoiser.dispatcher.decisions]
        again = run(pipe)  # the budget, cache and record start again with every run
        assert [d.program for d in handle.denoiser.dispatcher.decisions] == decisions
        cached_latents = final_latents(pipe)
    assert decisions == programs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    assert (cached_latents - final_latents(pipe)).abs().max() > 1e-2  # really cached: the stock latents differ
    with ditcache.apply(pipe, {**ADAPTIVE, "threshold": 0.0}):
        torch.testing.assert_close(run(pipe), stock, rtol=1e-5, atol=1e-6)


def test_apply_adaptive_from_an_engine_directory(pipe, tiny_model, tmp_path):
    from ditcache.export.export_engines import ExportRequest, export_engines

    schedule = tmp_path / "adaptive.yaml"
    schedule.write_text("".join(f"{k}: {v}\n" for k, v in ADAPTIVE.items()))
    export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / "eng", backend="eager",
                                 random_weights=True, batch_size=2), log=lambda m: None, progress=False)
    want, programs = reference_images(pipe, tiny_model)
    with ditcache.apply(pipe, schedule, backend="eager", engines=tmp_path / "eng") as handle:
        got = run(pipe)
        assert [d.program for d in handle.denoiser.dispatcher.decisions] == programs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_apply_adaptive_with_inductor_jit(pipe, tiny_model):
    """In process, compiled on first use: the same decisions and images as the reference loop."""
    want, programs = reference_images(pipe, tiny_model)
    with ditcache.apply(pipe, ADAPTIVE, backend="inductor-jit") as handle:
        got = run(pipe)
        assert [d.program for d in handle.denoiser.dispatcher.decisions] == programs
        assert sorted(handle.denoiser.dispatcher.programs) == ["compute", "probe", "replay"]
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
