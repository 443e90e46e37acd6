"""The sampling loop (class- or text-conditional, classifier-free guidance) over diffusers schedulers."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ditcache.graphs.flow_spec import FlowModelSpec
from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.runtime.conditioning import Conditioning, conditioning_for
from ditcache.compiler.runtime.prompts import PromptEmbeddings

SCHEDULERS = ("ddim", "dpm++", "euler", "ddpm", "lcm", "flow-euler", "flow-unipc")
FLOW_SCHEDULERS = ("flow-euler", "flow-unipc")  # flow matching (FLUX, SD3, Wan): compiler/runtime/flow_sampling.py

Denoiser = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def make_scheduler(name: str, config: Mapping[str, Any]):
    """A diffusers scheduler by short name, configured with the model's training noise schedule."""
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "dpm++": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "lcm": diffusers.LCMScheduler,
        "flow-euler": diffusers.FlowMatchEulerDiscreteScheduler,  # FluxPipeline, StableDiffusion3Pipeline
        "flow-unipc": diffusers.UniPCMultistepScheduler,  # WanPipeline (its config sets flow prediction)
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return classes[name].from_config(dict(config))


@dataclass(frozen=True)
class SampleRequest:
    """What to sample.

    Args:
        class_labels: one class per image (class-conditional models).
        steps: sampling steps (must equal the schedule's).
        guidance_scale: classifier-free guidance; <= 1 disables it (no batch doubling).
        seed: seeds the initial noise (same generator use as diffusers' DiTPipeline).
        scheduler: ``ddim``, ``dpm++``, ``euler``, ``ddpm``, ``lcm``, or for flow-matching models ``flow-euler``
            (FLUX, SD3) and ``flow-unipc`` (Wan).
        sample_seeds: one seed per image instead of ``seed``: each image's noise then depends only on its
            own seed, so batching and sharding do not change it.
        prompts: text-conditioned models: prompt embeddings, one row per image (instead of class labels),
            with the negative prompt's for guidance.
    """

    class_labels: tuple[int, ...] = ()
    steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 0
    scheduler: str = "ddim"
    sample_seeds: tuple[int, ...] | None = None
    prompts: PromptEmbeddings | None = field(default=None, compare=False)

    def uses_cfg(self, spec: ModelSpec) -> bool:
        """True when ``spec``'s denoiser sees the doubled guidance batch at this scale (its family's guidance kind:
        FLUX.1-dev embeds the scale instead)."""
        return spec.cfg_batch(self.guidance_scale)

    @property
    def num_images(self) -> int:
        return self.prompts.num_images if self.prompts is not None else len(self.class_labels)

    def denoiser_batch(self, spec: ModelSpec) -> int:
        """Batch ``spec``'s denoiser sees (doubled under classifier-free guidance)."""
        return self.num_images * (2 if self.uses_cfg(spec) else 1)

    def conditioning(self, spec: ModelSpec) -> Conditioning:
        """The checked conditioning of this request on ``spec``."""
        return conditioning_for(spec, tuple(self.class_labels), self.prompts, self.uses_cfg(spec))


def noise_generators(request: SampleRequest) -> torch.Generator | list[torch.Generator]:
    """One seeded CPU generator for the batch (as the diffusers pipelines), or one per image with
    ``sample_seeds``. The sampling loop draws x_T from it and hands it on to stochastic schedulers (LCM, DDPM)."""
    if request.sample_seeds is None:
        return torch.Generator(device="cpu").manual_seed(request.seed)
    if len(request.sample_seeds) != request.num_images:
        raise ValueError(f"{len(request.sample_seeds)} sample seeds for {request.num_images} images")
    return [torch.Generator().manual_seed(s) for s in request.sample_seeds]


def initial_noise(spec: ModelSpec, request: SampleRequest, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu",
                  generators: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
    """x_T (B, C, H, W) from :func:`noise_generators` (or ``generators``, which it advances)."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (spec.in_channels, spec.sample_size, spec.sample_size)
    generators = noise_generators(request) if generators is None else generators
    if isinstance(generators, torch.Generator):
        return randn_tensor((request.num_images, *shape), generator=generators, device=torch.device(device),
                            dtype=dtype)
    noise = [torch.randn((1, *shape), generator=g) for g in generators]
    return torch.cat(noise).to(device=device, dtype=dtype)


def validate_request(request: SampleRequest, spec: ModelSpec) -> None:
    """Raise ValueError when the request's conditioning does not fit ``spec`` (the message says the fix)."""
    request.conditioning(spec)


def noise_prediction(out: torch.Tensor, spec) -> torch.Tensor:
    """The denoiser's prediction in its output: learned-sigma channels dropped (DiT's (B, 2C, H, W) -> (B, C, H, W));
    outputs with as many channels as the input (flow models' packed (B, T, C) tokens included) as they are."""
    if spec.out_channels == spec.in_channels:
        return out
    return out[:, : spec.in_channels]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    spec: ModelSpec,
    request: SampleRequest,
    scheduler_config: Mapping[str, Any] | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run the reverse process; returns the final latents (B, C, H, W).

    Mirrors diffusers' DiTPipeline (class labels) and PixArtAlphaPipeline (prompt embeddings): noise from one
    seeded generator, which stochastic schedulers (LCM, DDPM) also draw from; guidance on the epsilon channels;
    learned-sigma channels dropped. Steps the scheduler from the unscaled sample. Flow-matching schedulers sample
    as the FLUX, SD3 and Wan pipelines do (:func:`~ditcache.compiler.runtime.flow_sampling.sample_flow`).
    """
    if request.scheduler in FLOW_SCHEDULERS or isinstance(spec, FlowModelSpec):
        from ditcache.compiler.runtime.flow_sampling import sample_flow

        return sample_flow(denoiser, spec, request, scheduler_config, progress, dtype, device)
    conditioning = request.conditioning(spec)
    cfg = request.uses_cfg(spec)
    scheduler = make_scheduler(request.scheduler, scheduler_config or spec.scheduler_config)
    cond = conditioning.inputs(cfg, dtype, device)
    scheduler.set_timesteps(request.steps)
    generators = noise_generators(request)
    latents = initial_noise(spec, request, dtype, device, generators)
    latents = latents * scheduler.init_noise_sigma  # 1 for DDIM, DPM-Solver, DDPM, LCM
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    timesteps = scheduler.timesteps
    iterator = timesteps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(timesteps, desc="sampling", unit="step")
    for t in iterator:
        model_in = torch.cat([latents, latents]) if cfg else latents  # (2B, C, H, W)
        model_in = scheduler.scale_model_input(model_in, t)
        t_batch = t.reshape(1).to(device=device, dtype=torch.float32).expand(model_in.shape[0])
        out = denoiser({"x": model_in.to(dtype), "timestep": t_batch, **cond})
        eps = noise_prediction(out, spec).float()
        if cfg:
            eps = conditioning.guide(eps, request.guidance_scale)
        latents = scheduler.step(eps, t, latents.float(), **step_kwargs).prev_sample.to(dtype)
    return latents


def model_denoiser(model: torch.nn.Module, spec: ModelSpec | None = None) -> Denoiser:
    """The unmodified diffusers model as a denoiser (the eager reference), class- or text-conditioned; with
    ``spec``, also the extra forward arguments its family record names (FLUX's txt_ids / img_ids)."""
    context = inspect.signature(model.forward).parameters.get("encoder_hidden_states")
    no_text = {"encoder_hidden_states": None} if context is not None and context.default is context.empty else {}
    extras = spec.family_record.forward_extras(spec) if spec is not None else {}

    def run(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        device = inputs["x"].device
        kwargs = {**no_text, **{k: v.to(device) for k, v in extras.items()}, **diffusers_kwargs(inputs)}
        return model(inputs["x"], timestep=inputs["timestep"], **kwargs).sample  # class-conditional U-Nets: no text

    return run


def diffusers_kwargs(inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ditcache's conditioning inputs as keyword arguments of a diffusers denoiser's forward (FLUX / SD3: pooled
    text embeddings; FLUX.1-dev: the embedded guidance scale)."""
    names = ("class_labels", "encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance")
    kwargs: dict[str, Any] = {k: inputs[k] for k in names if k in inputs}
    added = {k: inputs[k] for k in ("resolution", "aspect_ratio") if k in inputs}  # PixArt micro-conditions
    if added:
        kwargs["added_cond_kwargs"] = added
    return kwargs
