"""Flow-matching sampling as the stock FluxPipeline, StableDiffusion3Pipeline and WanPipeline do it.

The family's :class:`~ditcache.graphs.flow_spec.FlowSampling` says what differs: who spaces the sigmas (FLUX hands
``linspace(1, 1/n, n)`` to the scheduler, SD3 and Wan let ``set_timesteps`` do it), the resolution-dependent
shift ``mu`` (schedulers with ``use_dynamic_shifting``: FLUX.1-dev), the timestep the model takes (FLUX: t / 1000),
and the guidance: FLUX.1-dev embeds the scale as a model input (one batch), FLUX.1-schnell has none, SD3 runs
[negative; positive] as one batch. WanPipeline calls the transformer twice per step (conditional, then
unconditional); this loop runs the two as one [negative; positive] batch instead, so one step is one denoiser call
and each branch keeps its own cache rows (equal to the two calls within fp32 rounding: tests/compiler/
test_flow_sampling.py). The latents, the guidance arithmetic and the scheduler step stay in float32; the model
runs in ``dtype``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ditcache.graphs.flow_spec import FlowModelSpec, dynamic_shift, pack_latents
from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.runtime.conditioning import conditioning_for
from ditcache.compiler.runtime.sampling import (FLOW_SCHEDULERS, Denoiser, SampleRequest, make_scheduler,
                                                noise_generators)

GUIDANCE = "guidance"  # FLUX.1-dev's embedded guidance scale (graphs/flux.py)


def flow_spec(spec: ModelSpec, scheduler: str) -> FlowModelSpec:
    """``spec`` as a flow-matching spec sampled with a flow scheduler, or a ValueError saying which to use."""
    if not isinstance(spec, FlowModelSpec):
        raise ValueError(f"--scheduler {scheduler} samples flow-matching models (FLUX, SD3, Wan); {spec.name} is a "
                         f"diffusion model: use --scheduler {spec.sampler}")
    if scheduler not in FLOW_SCHEDULERS:
        raise ValueError(f"{spec.name} is a flow-matching model: sample it with --scheduler {spec.sampler} "
                         f"(one of {', '.join(FLOW_SCHEDULERS)}), not {scheduler}")
    return spec


def uses_cfg(spec: FlowModelSpec, guidance_scale: float) -> bool:
    """True when the denoiser sees the [negative; positive] batch; refuses a guidance scale the model cannot use."""
    kind = spec.flow.guidance
    if kind == "none" and guidance_scale > 1:
        raise ValueError(f"{spec.name} is guidance-distilled and takes no guidance (its pipeline ignores the scale); "
                         f"sample with --guidance 0")
    return spec.cfg_batch(guidance_scale)


def image_tokens(spec: FlowModelSpec) -> int:
    """Image tokens the model sees (the ``image_seq_len`` of the pipelines' dynamic shift)."""
    step = spec.family_record.resolution_step(spec.config)  # FLUX: 2x2 packing; SD3: the patch size
    height, width = spec.latent_shape[-2:]
    return (height // step) * (width // step)


def set_flow_timesteps(scheduler: Any, spec: FlowModelSpec, steps: int, device: torch.device | str = "cpu") -> None:
    """``scheduler.set_timesteps`` as the family's pipeline calls it (sigmas, dynamic shift), begin index 0."""
    kwargs: dict[str, Any] = {}
    if spec.flow.sigmas == "linspace" and not getattr(scheduler.config, "use_flow_sigmas", False):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    mu = dynamic_shift(scheduler.config, image_tokens(spec))
    if mu is not None:
        kwargs["mu"] = mu
    scheduler.set_timesteps(steps, device=device, **kwargs)
    scheduler.set_begin_index(0)


def flow_noise(spec: FlowModelSpec, request: SampleRequest, generators: torch.Generator | list[torch.Generator],
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The initial latents (float32), drawn as the pipeline draws them (one generator for the batch, or one per
    image with ``sample_seeds``), then packed into 2x2-patch tokens for FLUX."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = tuple(spec.latent_shape)
    if isinstance(generators, torch.Generator):
        latents = randn_tensor((request.num_images, *shape), generator=generators, device=torch.device(device),
                               dtype=torch.float32)
    else:
        latents = torch.cat([torch.randn((1, *shape), generator=g) for g in generators]).to(device)
    if spec.flow.packed:
        latents = pack_latents(latents)  # (B, C, H, W) -> (B, H/2 * W/2, 4C)
    return latents


@torch.no_grad()
def sample_flow(
    denoiser: Denoiser,
    spec: ModelSpec,
    request: SampleRequest,
    scheduler_config: Mapping[str, Any] | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run a flow-matching model's sampling loop; returns the final latents as the pipeline's ``output_type=
    "latent"`` does: (B, C, H, W), (B, C, F, H, W) for Wan, packed (B, T, 4C) for FLUX."""
    spec = flow_spec(spec, request.scheduler)
    cfg = uses_cfg(spec, request.guidance_scale)
    conditioning = conditioning_for(spec, tuple(request.class_labels), request.prompts, cfg)
    cond = conditioning.inputs(cfg, dtype, device)
    scheduler = make_scheduler(request.scheduler, scheduler_config or spec.scheduler_config)
    set_flow_timesteps(scheduler, spec, request.steps, device)
    latents = flow_noise(spec, request, noise_generators(request), device)
    batch = latents.shape[0] * (2 if cfg else 1)
    if GUIDANCE in spec.conditioning_inputs:  # one scale per image, an input of the model (no second batch)
        cond[GUIDANCE] = torch.full((batch,), float(request.guidance_scale), device=device).to(dtype)
    iterator = scheduler.timesteps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="sampling", unit="step")
    divisor = spec.flow.timestep_divisor
    for t in iterator:
        model_in = torch.cat([latents, latents]) if cfg else latents  # (2B, ...): negative half first
        timestep = t.expand(batch)
        if divisor != 1:  # FLUX: the pipeline hands the model t / 1000 in the latents' dtype
            timestep = timestep.to(dtype) / divisor
        out = denoiser({"x": model_in.to(dtype), "timestep": timestep.to(torch.float32), **cond}).float()
        if cfg:
            out = conditioning.guide(out, request.guidance_scale)
        latents = scheduler.step(out, t, latents, return_dict=False)[0].float()
    return latents
