"""Class-conditional sampling loop with classifier-free guidance over diffusers schedulers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ditcache.graphs.registry import ModelSpec

SCHEDULERS = ("ddim", "dpm++", "euler", "ddpm")

Denoiser = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


def make_scheduler(name: str, config: Mapping[str, Any]):
    """A diffusers scheduler by short name, configured with the model's training noise schedule."""
    import diffusers

    classes = {
        "ddim": diffusers.DDIMScheduler,
        "dpm++": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "ddpm": diffusers.DDPMScheduler,
    }
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
    return classes[name].from_config(dict(config))


@dataclass(frozen=True)
class SampleRequest:
    """What to sample.

    Args:
        class_labels: one class per image.
        steps: sampling steps (must equal the schedule's).
        guidance_scale: classifier-free guidance; <= 1 disables it (no batch doubling).
        seed: seeds the initial noise (same generator use as diffusers' DiTPipeline).
        scheduler: ``ddim``, ``dpm++``, ``euler`` or ``ddpm``.
        sample_seeds: one seed per image instead of ``seed``: each image's noise then depends only on its
            own seed, so batching and sharding do not change it.
    """

    class_labels: tuple[int, ...]
    steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 0
    scheduler: str = "ddim"
    sample_seeds: tuple[int, ...] | None = None

    @property
    def cfg(self) -> bool:
        return self.guidance_scale > 1

    @property
    def model_batch(self) -> int:
        """Batch the denoiser sees (doubled under guidance)."""
        return len(self.class_labels) * (2 if self.cfg else 1)


def initial_noise(spec: ModelSpec, request: SampleRequest, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T (B, C, H, W): one generator for the batch (as DiTPipeline), or one per image with ``sample_seeds``."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (spec.in_channels, spec.sample_size, spec.sample_size)
    if request.sample_seeds is None:
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        return randn_tensor((len(request.class_labels), *shape), generator=generator, device=torch.device(device),
                            dtype=dtype)
    if len(request.sample_seeds) != len(request.class_labels):
        raise ValueError(f"{len(request.sample_seeds)} sample seeds for {len(request.class_labels)} images")
    noise = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(s)) for s in request.sample_seeds]
    return torch.cat(noise).to(device=device, dtype=dtype)


def validate_request(request: SampleRequest, spec: ModelSpec) -> None:
    bad = [c for c in request.class_labels if not 0 <= c < spec.num_classes]
    if bad:
        raise ValueError(f"class {bad[0]} is outside {spec.name}'s classes 0..{spec.num_classes - 1}")
    if not request.class_labels:
        raise ValueError("give at least one class label")


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

    Mirrors diffusers' DiTPipeline (noise from one seeded generator, guidance on the epsilon channels,
    learned-sigma channels dropped), but steps the scheduler from the unscaled sample.
    """
    validate_request(request, spec)
    scheduler = make_scheduler(request.scheduler, scheduler_config or spec.scheduler_config)
    channels = spec.in_channels
    latents = initial_noise(spec, request, dtype, device)
    labels = torch.tensor(request.class_labels, device=device)
    if request.cfg:
        labels = torch.cat([labels, torch.full_like(labels, spec.null_class)])
    scheduler.set_timesteps(request.steps)
    timesteps = scheduler.timesteps
    iterator = timesteps
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(timesteps, desc="sampling", unit="step")
    for t in iterator:
        model_in = torch.cat([latents, latents]) if request.cfg else latents  # (2B, C, H, W)
        model_in = scheduler.scale_model_input(model_in, t)
        t_batch = t.reshape(1).to(device=device, dtype=torch.float32).expand(model_in.shape[0])
        out = denoiser({"x": model_in.to(dtype), "timestep": t_batch, "class_labels": labels})
        eps = out[:, :channels].float()  # learned-sigma channels dropped
        if request.cfg:
            cond, uncond = eps.chunk(2)
            eps = uncond + request.guidance_scale * (cond - uncond)
        latents = scheduler.step(eps, t, latents.float()).prev_sample.to(dtype)
    return latents


def model_denoiser(model: torch.nn.Module) -> Denoiser:
    """The unmodified diffusers model as a denoiser (the eager reference)."""

    def run(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(inputs["x"], timestep=inputs["timestep"], class_labels=inputs["class_labels"]).sample

    return run
