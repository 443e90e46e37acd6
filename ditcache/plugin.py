"""``apply(pipe, ...)``: make a stock diffusers DiTPipeline, PixArtAlphaPipeline or StableDiffusionPipeline sample
with a cached, compiled denoiser."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ditcache.compiler.backend import BuildSettings, get_backend, require
from ditcache.compiler.graph_specs import plan_graphs
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.graphs import parts_for
from ditcache.graphs.configs import AdaptiveConfig, BlockCacheConfig, DeltaDiTConfig, FullConfig, ScheduleConfig
from ditcache.graphs.dtypes import precision_of
from ditcache.graphs.plan import Plan
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import ModelSpec, spec_for_config
from ditcache.graphs.schedule import Schedule, load_schedule, parse_schedule

CONFIGS_TUPLE = (DeltaDiTConfig, BlockCacheConfig, FullConfig, AdaptiveConfig)


class CachedDenoiser(nn.Module):
    """Stands in for ``pipe.transformer`` (or ``pipe.unet``): same call signature (DiT's class labels, PixArt's or
    Stable Diffusion's text conditioning, FLUX's and SD3's pooled embeddings, FLUX.1-dev's guidance), runs the
    plan's variant for each step.

    Pipelines that call the denoiser twice per step (WanPipeline's conditional and unconditional calls, FluxPipeline
    with ``true_cfg_scale``) name each call with ``cache_context("cond" | "uncond", step_index=i)``: every name gets
    its own dispatcher (caches and step counter) over the same stateless graphs, and a call whose ``step_index``
    is not its dispatcher's step is refused instead of drifting.
    """

    def __init__(self, original: nn.Module, plan: Plan, build, spec: ModelSpec):
        super().__init__()
        self.original = original
        self.plan = plan
        self.spec = spec
        self._build = build
        self._built: dict[tuple, Dispatcher] = {}  # per input shape: the graphs (a dispatcher over them)
        self._dispatchers: dict[tuple, Dispatcher] = {}  # per input shape and cache context: caches, step
        self._context: tuple[str, int | None] | None = None
        self.dispatcher: Dispatcher | None = None

    @contextlib.contextmanager
    def cache_context(self, name: str, **kwargs: Any):
        """diffusers' ``CacheMixin.cache_context``: the calls inside belong to branch ``name`` (``step_index``: the
        pipeline's step, checked against that branch's dispatcher)."""
        previous = self._context
        self._context = (name, kwargs.get("step_index"))
        try:
            yield
        finally:
            self._context = previous

    @property
    def config(self):
        return self.original.config

    @property
    def dtype(self) -> torch.dtype:
        return self.original.dtype

    @property
    def device(self) -> torch.device:
        return self.original.device

    def reset(self) -> None:
        for dispatcher in self._dispatchers.values():
            dispatcher.reset()

    def forward(self, hidden_states, timestep=None, class_labels=None, return_dict: bool = True, *,
                encoder_hidden_states=None, encoder_attention_mask=None, added_cond_kwargs=None, **kwargs: Any):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1).float()
        timestep = timestep.expand(hidden_states.shape[0])
        inputs = {"x": hidden_states, "timestep": timestep,
                  **self._conditioning(hidden_states, class_labels, encoder_hidden_states, encoder_attention_mask,
                                       added_cond_kwargs, kwargs)}
        call = {"hidden_states": hidden_states, "encoder_hidden_states": encoder_hidden_states, **kwargs}
        call_spec = self.spec.family_record.call_spec(self.spec, call)  # the shapes this call's graphs need
        shapes = tuple((k, tuple(v.shape)) for k, v in inputs.items()) + (
            hidden_states.dtype, hidden_states.device.type, repr(call_spec))
        branch, step_index = self._context or (None, None)
        key = shapes + (branch,)
        if key not in self._dispatchers:
            if shapes not in self._built:
                self._built[shapes] = self._build(inputs, call_spec)  # one set of graphs per input shape
            built = self._built[shapes]
            taken = any(d is built for d in self._dispatchers.values())
            self._dispatchers[key] = built.fresh() if taken else built  # each branch: caches of its own
        self.dispatcher = self._dispatchers[key]
        if step_index is not None and step_index != self.dispatcher.step:
            raise RuntimeError(f"the pipeline calls branch {branch!r} at step {step_index}, but that branch's "
                               f"dispatcher is at step {self.dispatcher.step}: the pipeline skipped or repeated a "
                               f"call of this branch, which a cached schedule cannot follow")
        out = self.dispatcher(inputs)
        out = out.to(hidden_states.dtype)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _conditioning(self, hidden_states, class_labels, encoder_hidden_states, encoder_attention_mask,
                      added_cond_kwargs, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The pipeline's conditioning arguments as ditcache's named inputs."""
        names = self.spec.conditioning_inputs
        if not self.spec.text_conditioned:
            return {"class_labels": class_labels}
        if encoder_hidden_states is None:
            raise ValueError(f"{type(self.original).__name__} needs encoder_hidden_states")
        values = {"encoder_hidden_states": encoder_hidden_states}
        if "encoder_attention_mask" in names:
            if encoder_attention_mask is None:  # no mask: every token attends
                encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long,
                                                    device=hidden_states.device)
            if encoder_attention_mask.ndim != 2:
                raise ValueError(f"ditcache takes encoder_attention_mask as a (batch, tokens) keep-mask, got shape "
                                 f"{tuple(encoder_attention_mask.shape)}")
            values["encoder_attention_mask"] = encoder_attention_mask
        for name in ("resolution", "aspect_ratio"):
            if name in names:
                value = (added_cond_kwargs or {}).get(name)
                if value is None:
                    raise ValueError(f"{self.spec.name} takes micro-conditions: pass added_cond_kwargs[{name!r}]")
                values[name] = value
        for name in ("pooled_projections", "guidance"):  # FLUX / SD3; FLUX.1-dev's embedded guidance scale
            if name in names:
                if kwargs.get(name) is None:
                    raise ValueError(f"{self.spec.name} takes {name}: the pipeline must pass it")
                values[name] = kwargs[name]
        return values


class CacheHandle:
    """What :func:`apply` returns: ``remove()`` (or leaving its ``with`` block) restores the pipeline."""

    def __init__(self, pipe, denoiser: CachedDenoiser, original: nn.Module):
        self.pipe, self.denoiser, self.original = pipe, denoiser, original
        self.plan = denoiser.plan
        scheduler = pipe.scheduler
        real = scheduler.set_timesteps

        @functools.wraps(real)  # pipelines inspect its parameters (FluxPipeline passes sigmas, mu)
        def set_timesteps(num_inference_steps=None, *args, **kwargs):
            given = kwargs.get("sigmas") if kwargs.get("sigmas") is not None else kwargs.get("timesteps")
            if num_inference_steps is None and given is not None:
                num_inference_steps = len(given)
            if num_inference_steps is not None and num_inference_steps != self.plan.num_steps:
                raise ValueError(
                    f"ditcache schedule has {self.plan.num_steps} steps but the pipeline was called with "
                    f"num_inference_steps={num_inference_steps}; call it with {self.plan.num_steps} or apply "
                    f"a schedule for {num_inference_steps} steps"
                )
            denoiser.reset()  # every pipeline run starts by setting timesteps: caches start empty
            return real(num_inference_steps, *args, **kwargs)

        scheduler.set_timesteps = set_timesteps
        self.attribute = denoiser_attribute(pipe)
        setattr(pipe, self.attribute, denoiser)

    def remove(self) -> None:
        """Put the original denoiser (transformer or U-Net) and scheduler back."""
        setattr(self.pipe, self.attribute, self.original)
        self.pipe.scheduler.__dict__.pop("set_timesteps", None)

    def __enter__(self) -> "CacheHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def denoiser_attribute(pipe) -> str:
    """The pipeline attribute holding its denoiser: ``unet`` (StableDiffusionPipeline) or ``transformer``."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def _as_schedule(schedule: "str | Path | Schedule | ScheduleConfig | Mapping[str, Any]") -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, CONFIGS_TUPLE):
        return schedule.to_schedule()
    if isinstance(schedule, Mapping):
        return parse_schedule(schedule)
    if isinstance(schedule, (str, Path)):
        return load_schedule(schedule)
    raise TypeError(f"schedule must be a schedule.yaml path, a mapping, a Schedule or a config (DeltaDiTConfig, "
                    f"BlockCacheConfig, AdaptiveConfig, FullConfig), got {type(schedule).__name__}")


def apply(pipe, schedule, backend: str = "eager", engines: str | Path | None = None,
          granularity: str = "variant", options: Mapping[str, Any] | None = None) -> CacheHandle:
    """Make ``pipe`` (a diffusers ``DiTPipeline``, ``PixArtAlphaPipeline`` or ``StableDiffusionPipeline``) sample with
    a cached, compiled denoiser.

    Args:
        pipe: the pipeline; only ``pipe.transformer`` (``pipe.unet``) is replaced (and ``scheduler.set_timesteps``
            wrapped to reset caches at the start of every run and refuse a step count the schedule was not made for).
        schedule: a config (:class:`DeltaDiTConfig`, :class:`BlockCacheConfig`, :class:`AdaptiveConfig`,
            :class:`FullConfig`), a schedule.yaml path, a mapping, or a :class:`Schedule`.
        backend: ``eager`` or ``inductor-jit`` compile in process from ``pipe.transformer`` (per input shape, on
            first use); ``inductor`` (AOTInductor packages), ``onnxruntime`` and ``tensorrt`` run prebuilt engines:
            pass ``engines``.
        engines: engine directory from ``export-engines`` (checked against the schedule; any batch size runs, in
            chunks of the engines' batch).
        granularity: ``variant`` or ``segment`` for in-process backends.
        options: backend options (e.g. ``{"cuda_graphs": True}`` for inductor-jit on CUDA).

    Returns:
        a :class:`CacheHandle`; ``handle.remove()`` or ``with apply(...):`` restores the pipeline.

    Example::

        pipe = DiTPipeline.from_pretrained("path/to/DiT-XL-2-256")
        with ditcache.apply(pipe, "schedules/dit-xl-delta-20.yaml", backend="inductor-jit"):
            images = pipe(class_labels=[207], num_inference_steps=20).images

        config = ditcache.DeltaDiTConfig(steps=20, interval=2, cached_blocks=21, boundary=10)
        with ditcache.apply(pipe, config):
            images = pipe(class_labels=[207], num_inference_steps=20).images
    """
    original = getattr(pipe, denoiser_attribute(pipe))
    if isinstance(original, CachedDenoiser):
        raise ValueError("ditcache is already applied to this pipeline; call remove() on its handle first")
    spec = spec_for_config(original.config)
    schedule = _as_schedule(schedule)
    plan = plan_for(schedule, spec)
    chosen = get_backend(backend)
    if chosen.writes_artifacts and engines is None:
        raise ValueError(f"backend {backend!r} runs prebuilt engines: export them with `ditcache export-engines "
                         f"--backend {backend}` and pass engines=DIR (or use backend='eager'/'inductor-jit')")

    engines_loaded = []  # the directory, loaded once: every input shape gets its own Dispatcher (caches) over it

    def build(inputs: Mapping[str, torch.Tensor], call_spec: ModelSpec) -> Dispatcher:
        hidden_states = inputs["x"]  # call_spec: the family's spec of this call (text length, latent size)
        if engines is not None:
            from ditcache.export.load import load_engines

            if not engines_loaded:
                engines_loaded.append(load_engines(engines, schedule=schedule))
            loaded = engines_loaded[0]  # any batch: its dispatcher runs other sizes in chunks of the engines' batch
            if loaded.spec.text_length != call_spec.text_length:
                raise ValueError(f"engines in {engines} were built for {loaded.spec.text_length} text tokens, the "
                                 f"pipeline calls with {call_spec.text_length}; call it with "
                                 f"max_sequence_length={loaded.spec.text_length}")
            return loaded.dispatcher.fresh()  # stateless variants: a Dispatcher of this shape's own over them
        settings = BuildSettings(precision_of(original.dtype), hidden_states.device.type, dict(options or {}))
        require(chosen, settings)
        parts = parts_for(original.eval(), call_spec)
        graphs = {g.name: g for g in plan_graphs(parts, plan, granularity, hidden_states.shape[0], original.dtype)}
        flats = {name: chosen.load(g, settings, []) for name, g in graphs.items()}
        return build_dispatcher(plan, parts=parts, flats=flats, graphs=graphs, granularity=granularity)

    return CacheHandle(pipe, CachedDenoiser(original, plan, build, spec), original)
