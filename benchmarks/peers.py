"""Peers of ditcache's schedules on the same sampling loop: diffusers' cache hooks and cache-dit's DBCache.

Every method (ditcache's schedules and each peer) is a :class:`Method`: a denoiser for ditcache's own sampling loop
(``compiler.sampling.sample``: identical scheduler, guidance, noise and seeds for everyone), ``start_run()`` before
each sampling run (resets the peer's state) and ``remove()``. The peers:

* diffusers (``diffusers.hooks``, always installed): ``fbc`` (First Block Cache), ``pab`` (Pyramid Attention
  Broadcast), ``fastercache``, ``magcache`` (ratios from a calibration run on other seeds), ``taylorseer`` (hooked on
  ``transformer_blocks.*.attn1`` and ``.ff``: its default identifiers hook nothing on DiT blocks) and ``seacache``.
  ``DiTTransformer2DModel`` has no ``CacheMixin``, so the hooks are applied with the ``apply_*`` functions and every
  denoiser call is wrapped in ``CacheMixin.cache_context`` with the step index, step count, timestep and a sigma
  (the VP noise level mapped to the flow-matching parametrization SeaCache expects:
  ``sqrt(1-a) / (sqrt(a) + sqrt(1-a))``); PAB and FasterCache read the timestep through their callback.
* cache-dit (optional extra ``ditcache[peers]``): ``dbcache`` (``cache_dit.enable_cache`` on the bare transformer
  with ``DBCacheConfig``: Fn/Bn compute blocks, residual threshold, warm-up, optional ``steps_mask`` and
  ``TaylorSeerCalibratorConfig``); ``refresh_context`` before each run.
* SmoothCache (optional extra ``ditcache[peers]``): ``smoothcache`` (benchmarks/smoothcache_peer.py: a calibrated
  static schedule per layer type, applied by SmoothCache's own ``SmoothCacheHelper``).

Counting: :class:`CallCounter` puts forward pre-hooks on *leaf* layers (each block's ``attn1.to_q`` and its MLP's
last ``Linear``, the patch embedding's conv and ``proj_out_2``) and adds the batch each call sees. Hooks on a block
or an attention module would fire even when a peer's hook has replaced that module's forward by a cache lookup;
a leaf layer only runs when the computation does. ditcache's eager segments call the same layers, so everyone is
counted the same way. MACs follow from the counts and ``graphs/macs.py`` (attention and the rest of a block
apart, since PAB and FasterCache skip attention only).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample

DIFFUSERS_METHODS = ("fbc", "pab", "fastercache", "magcache", "taylorseer", "seacache")
CACHE_DIT_METHODS = ("dbcache",)
SMOOTHCACHE_METHODS = ("smoothcache",)
METHODS = ("ditcache", *DIFFUSERS_METHODS, *CACHE_DIT_METHODS, *SMOOTHCACHE_METHODS)
CACHE_DIT_VERSION = "1.5.3"

FAMILIES = {
    "ditcache": "ditcache", "fbc": "diffusers FirstBlockCache", "pab": "diffusers PyramidAttentionBroadcast",
    "fastercache": "diffusers FasterCache", "magcache": "diffusers MagCache", "taylorseer": "diffusers TaylorSeer",
    "seacache": "diffusers SeaCache", "dbcache": "cache-dit DBCache", "smoothcache": "SmoothCache",
}


class PeerUnavailable(RuntimeError):
    """The peer's package is not installed (the message says how to install it)."""


def cache_dit_unavailable() -> str | None:
    """Why cache-dit cannot run here (None: it can)."""
    try:
        import cache_dit
    except ImportError as exc:
        return f"cache-dit is not installed ({exc}); pip install 'ditcache[peers]' (cache-dit=={CACHE_DIT_VERSION})"
    version = getattr(cache_dit, "__version__", "?")
    if version != CACHE_DIT_VERSION:
        return f"cache-dit {version} is installed, the comparison pins {CACHE_DIT_VERSION}"
    return None


def peer_unavailable(method: str) -> str | None:
    """Why the optional package of ``method`` cannot run here (None: it can, or it needs none)."""
    if method in CACHE_DIT_METHODS:
        return cache_dit_unavailable()
    if method in SMOOTHCACHE_METHODS:
        from .smoothcache_peer import smoothcache_unavailable

        return smoothcache_unavailable()
    return None


# ---- counting -----------------------------------------------------------------------------------------
def _last_linear(module: nn.Module) -> nn.Module:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no Linear layer to count")
    return linears[-1]


class CallCounter:
    """Samples processed by each leaf layer, per denoiser call (see the module docstring).

    ``calls`` is a list with one dict per denoiser call: ``head``, ``tail`` (samples), ``attn`` and ``mlp``
    (per block: samples). Counting is on while ``enabled``.
    """

    def __init__(self, model: nn.Module):
        self.enabled = True
        self.calls: list[dict[str, Any]] = []
        self.blocks = len(model.transformer_blocks)
        self._handles = []
        self._watch(model.pos_embed.proj, "head", None)
        self._watch(model.proj_out_2, "tail", None)
        for i, block in enumerate(model.transformer_blocks):
            self._watch(block.attn1.to_q, "attn", i)
            self._watch(_last_linear(block.ff), "mlp", i)

    def _watch(self, module: nn.Module, kind: str, index: int | None) -> None:
        def pre(mod, args, kwargs):
            if not self.enabled:
                return
            x = args[0] if args else next(iter(kwargs.values()))
            if kind == "head":  # a new denoiser call starts at the patch embedding
                self.calls.append({"head": 0, "tail": 0, "attn": [0] * self.blocks, "mlp": [0] * self.blocks})
            if not self.calls:
                return
            n = int(x.shape[0])
            if index is None:
                self.calls[-1][kind] += n
            else:
                self.calls[-1][kind][index] += n

        self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def block_cost_split(spec) -> tuple[int, int]:
    """(attention MACs, rest of the block's MACs) per sample of one DiT block (graphs/macs.py's block total)."""
    from ditcache.graphs import costs_for

    d = spec.hidden_size
    tokens = (spec.sample_size // spec.patch_size) ** 2
    attention = 4 * tokens * d * d + 2 * tokens * tokens * d  # q, k, v, out; scores and weighted sum
    block = costs_for(spec, 1).blocks[0]
    return attention, block - attention


def count_summary(calls: list[dict[str, Any]], spec, images: int, runs: int) -> dict[str, Any]:
    """Blocks and attention layers run per sampling run and MACs per image, from the counted calls of ``runs``
    sampling runs of ``images`` images each."""
    from ditcache.graphs import costs_for

    costs = costs_for(spec, 1)
    attention, rest = block_cost_split(spec)
    samples = sum(c["head"] for c in calls)
    macs = sum(c["head"] * costs.head + c["tail"] * costs.tail + sum(c["attn"]) * attention + sum(c["mlp"]) * rest
               for c in calls)
    per_call_batch = samples / max(1, len(calls))  # the model batch of a full call (CFG doubles it)
    steps = len(calls) / max(1, runs)
    full_blocks = steps * spec.num_blocks
    blocks_run = sum(sum(c["mlp"]) for c in calls) / max(1, runs) / max(per_call_batch, 1)
    attn_run = sum(sum(c["attn"]) for c in calls) / max(1, runs) / max(per_call_batch, 1)
    per_step = [round(sum(c["mlp"]) / max(c["head"], 1), 3) for c in calls[:int(steps)]]
    n = max(1, int(steps))  # blocks of each run (adaptive rows and deciding peers vary per batch)
    each_run = [round(sum(sum(c["mlp"]) / max(c["head"], 1) for c in calls[i:i + n]), 3)
                for i in range(0, len(calls), n)]
    full_macs = steps * (costs.full) * per_call_batch / max(1, images)
    return {
        "denoiser_calls_per_run": steps,
        "blocks_run_per_run": blocks_run,
        "attn_run_per_run": attn_run,
        "blocks_full_per_run": full_blocks,
        "gmacs_per_image": macs / max(1, runs) / max(1, images) / 1e9,
        "mac_fraction": (macs / max(1, runs) / max(1, images)) / full_macs if full_macs else None,
        "blocks_per_step_first_run": per_step,
        "blocks_run_each_run": each_run,
    }


# ---- the methods --------------------------------------------------------------------------------------
@dataclass
class Method:
    """A denoiser for ``sample`` plus its per-run reset and removal. ``model_fn`` is what runs the transformer
    (the model, or torch.compile of it)."""

    name: str
    kind: str
    denoiser: Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
    start_run: Callable[[], None]
    remove: Callable[[], None]
    info: Callable[[], dict[str, Any]] = lambda: {}
    notes: list[str] = field(default_factory=list)


def _vp_to_flow_sigma(alpha_bar: float) -> float:
    a, b = math.sqrt(alpha_bar), math.sqrt(max(0.0, 1.0 - alpha_bar))
    return b / (a + b)


class _Loop:
    """Step counter and timestep of the running sampling loop, for the hooks' contexts and callbacks."""

    def __init__(self, spec, steps: int):
        from ditcache.compiler.runtime.sampling import make_scheduler

        self.steps = steps
        self.step = 0
        self.timestep = 999
        self.alphas = make_scheduler("ddpm", spec.scheduler_config).alphas_cumprod

    def sigma(self, t: int) -> float:
        return _vp_to_flow_sigma(float(self.alphas[int(t)]))


def _diffusers_config(method: str, params: dict[str, Any], loop: _Loop, spec, calibrate: Callable | None):
    from diffusers import hooks as dh

    p = dict(params)
    if method == "fbc":
        return dh.apply_first_block_cache, dh.FirstBlockCacheConfig(**p)
    if method == "pab":
        p.setdefault("spatial_attention_block_skip_range", 2)
        if "spatial_attention_timestep_skip_range" in p:
            p["spatial_attention_timestep_skip_range"] = tuple(p["spatial_attention_timestep_skip_range"])
        return dh.apply_pyramid_attention_broadcast, dh.PyramidAttentionBroadcastConfig(
            current_timestep_callback=lambda: loop.timestep, **p)
    if method == "fastercache":
        weight = float(p.pop("attention_weight", 0.5))
        for key in [k for k in p if k.endswith("_range") and isinstance(p[k], list)]:
            p[key] = tuple(p[key])
        p.setdefault("tensor_format", "BCHW")
        return dh.apply_faster_cache, dh.FasterCacheConfig(
            current_timestep_callback=lambda: loop.timestep, attention_weight_callback=lambda _: weight, **p)
    if method == "magcache":
        ratios = p.pop("mag_ratios", None)
        if ratios is None:
            ratios = calibrate()
        return dh.apply_mag_cache, dh.MagCacheConfig(mag_ratios=list(ratios), num_inference_steps=loop.steps, **p)
    if method == "taylorseer":
        p.setdefault("cache_identifiers", [r"transformer_blocks\.\d+\.attn1", r"transformer_blocks\.\d+\.ff"])
        p["taylor_factors_dtype"] = getattr(torch, p.get("taylor_factors_dtype", "float32"))
        return dh.apply_taylorseer_cache, dh.TaylorSeerCacheConfig(**p)
    if method == "seacache":
        from diffusers.hooks.sea_cache import SeaCacheConfig, apply_sea_cache

        channels = spec.in_channels

        def raw_vision(module, args, kwargs):  # (C, T=1, H, W) per sample: the latents being denoised
            x = args[0] if args else kwargs["hidden_states"]
            return [s[:channels, None] for s in x]

        return apply_sea_cache, SeaCacheConfig(raw_vision_callback=raw_vision, **p)
    raise ValueError(f"unknown diffusers method {method!r}; choose one of {', '.join(DIFFUSERS_METHODS)}")


def _remove_diffusers_hooks(model: nn.Module) -> None:
    from diffusers.hooks import HookRegistry

    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry.hooks):
                registry.remove_hook(name, recurse=False)
            registry._child_registries_cache = None
    HookRegistry.check_if_exists_or_initialize(model)._child_registries_cache = None


def magcache_ratios(model: nn.Module, spec, request: SampleRequest) -> list[float]:
    """MagCache's calibration mode on one sampling run of ``request``: the ratios it prints."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    loop = _Loop(spec, request.steps)
    apply_mag_cache(model, MagCacheConfig(calibrate=True, num_inference_steps=request.steps))
    method = _diffusers_method("magcache-calibration", model, spec, loop, None, None)
    buf = io.StringIO()
    try:
        method.start_run()
        with contextlib.redirect_stdout(buf):
            sample(method.denoiser, spec, request)
    finally:
        _remove_diffusers_hooks(model)
    found = re.findall(r"\[([0-9eE.,\s+-]+)\]", buf.getvalue())
    if not found:
        raise RuntimeError(f"MagCache calibration printed no ratios: {buf.getvalue()[-300:]!r}")
    return [float(x) for x in found[-1].split(",")]


def _diffusers_method(name: str, model: nn.Module, spec, loop: _Loop, model_fn, notes) -> Method:
    from diffusers.hooks import HookRegistry
    from diffusers.models.cache_utils import CacheMixin

    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry._child_registries_cache = None  # diffusers caches the child registries at the first context: refresh
    run = model_denoiser(model if model_fn is None else model_fn)  # no `or`: a compiled module has no truth value

    def denoiser(inputs):
        t = int(inputs["timestep"][0])
        loop.timestep = t
        with CacheMixin.cache_context(model, "cond", step_index=loop.step, num_inference_steps=loop.steps,
                                      timestep=float(t), sigma=loop.sigma(t)):
            out = run(inputs)
        loop.step += 1
        return out

    def start_run():
        loop.step = 0
        registry.reset_stateful_hooks(recurse=True)

    return Method(name, "diffusers", denoiser, start_run, lambda: _remove_diffusers_hooks(model),
                  notes=list(notes or []))


def _cache_dit_method(name: str, model: nn.Module, spec, steps: int, params: dict[str, Any], model_fn) -> Method:
    reason = cache_dit_unavailable()
    if reason:
        raise PeerUnavailable(reason)
    import cache_dit
    from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

    p = dict(params)
    taylorseer = p.pop("taylorseer", None)
    mask = p.pop("steps_mask", None)
    config = DBCacheConfig(
        Fn_compute_blocks=int(p.pop("Fn", 1)), Bn_compute_blocks=int(p.pop("Bn", 0)),
        residual_diff_threshold=float(p.pop("threshold", 0.08)), max_warmup_steps=int(p.pop("warmup", 4)),
        num_inference_steps=steps, enable_separate_cfg=False, **p)
    if mask is not None:
        config.steps_computation_mask = (cache_dit.steps_mask(total_steps=steps, mask_policy=mask)
                                         if isinstance(mask, str) else
                                         cache_dit.steps_mask(compute_bins=list(mask["compute"]),
                                                              cache_bins=list(mask["cache"]), total_steps=steps))
    calibrator = None
    if taylorseer:
        calibrator = TaylorSeerCalibratorConfig(taylorseer_order=int(taylorseer))
    with contextlib.redirect_stdout(io.StringIO()):
        cache_dit.enable_cache(model, cache_config=copy.deepcopy(config), calibrator_config=copy.deepcopy(calibrator))
    run = model_denoiser(model if model_fn is None else model_fn)  # no `or`: a compiled module has no truth value

    def start_run():
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.refresh_context(model, cache_config=copy.deepcopy(config),
                                      calibrator_config=copy.deepcopy(calibrator), verbose=False)

    def info():
        try:
            stats = cache_dit.summary(model, logging=False)
            cached = [sorted(int(s) for s in (st.cached_steps or [])) for st in stats if st.cached_steps is not None]
            return {"cache_dit_cached_steps": cached[0] if cached else [],
                    "cache_dit_config": config.strify() + (f"_{calibrator.strify()}" if calibrator else "")}
        except Exception as exc:  # noqa: BLE001 - a summary is a note, not a measurement
            return {"cache_dit_summary_error": f"{type(exc).__name__}: {exc}"}

    def remove():
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.disable_cache(model)

    return Method(name, "cache-dit", lambda inputs: run(inputs), start_run, remove, info,
                  notes=[f"cache-dit {CACHE_DIT_VERSION} {config.strify()}"
                         + (f" + TaylorSeer order {taylorseer}" if taylorseer else "")])


def _ditcache_method(name: str, model: nn.Module, spec, schedule, compiled: bool) -> Method:
    from ditcache.compiler.runtime.build import build_dispatcher
    from ditcache.graphs import parts_for
    from ditcache.graphs.adaptive import is_adaptive
    from ditcache.graphs.planning import plan_for

    plan = plan_for(schedule, spec)
    parts = parts_for(model, spec)
    if compiled:  # the inductor-jit backend at export-engines' default granularity: one compiled graph per variant
        from ditcache.compiler.backend import BuildSettings, get_backend
        from ditcache.compiler.graph_specs import plan_graphs

        backend, settings = get_backend("inductor-jit"), BuildSettings("fp32", "cpu")
        graphs = {g.name: g for g in plan_graphs(parts, plan, "variant", 1, torch.float32)}  # shapes: at 1st call
        flats = {n: backend.load(g, settings, []) for n, g in graphs.items()}
        dispatcher = build_dispatcher(plan, parts=parts, flats=flats, graphs=graphs, granularity="variant")
    else:
        dispatcher = build_dispatcher(plan, parts=parts)
    notes = ["ditcache's inductor-jit backend at its default variant granularity (torch.compile(fullgraph=True, "
             "dynamic=False) of each step variant, as export-engines --backend inductor-jit)"] if compiled else []
    if is_adaptive(plan):  # decided at run time: keep every run's decisions (benchmarks/peer_adaptive.py)
        from .peer_adaptive import recording

        denoiser, info = recording(dispatcher, spec.num_blocks)
        return Method(name, "ditcache", denoiser, dispatcher.reset, lambda: None, info, notes)
    return Method(name, "ditcache", dispatcher, dispatcher.reset, lambda: None, notes=notes)


def install(row: Mapping[str, Any], model: nn.Module, spec, steps: int, compiled: bool = False,
            calibration: SampleRequest | None = None) -> Method:
    """The row's method on ``model`` (``compiled``: torch.compile around the transformer / ditcache's segments).

    ``row``: ``{name, method, ...params}``; ditcache rows carry ``schedule`` (a Schedule object).
    """
    method = row["method"]
    params = {k: v for k, v in row.items() if k not in ("name", "method", "schedule", "family", "note")}
    if method == "ditcache":
        return _ditcache_method(row["name"], model, spec, row["schedule"], compiled)
    model_fn = torch.compile(model) if compiled else None
    if method in CACHE_DIT_METHODS:
        return _cache_dit_method(row["name"], model, spec, steps, params, model_fn)
    if method in SMOOTHCACHE_METHODS:
        from .smoothcache_peer import smoothcache_method

        return smoothcache_method(row["name"], model, spec, steps, params, model_fn, calibration)
    if method in DIFFUSERS_METHODS:
        loop = _Loop(spec, steps)
        notes = []
        ratios_holder: dict[str, list[float]] = {}

        def calibrate():
            if calibration is None:
                raise ValueError("magcache needs mag_ratios or a calibration request")
            ratios_holder["r"] = magcache_ratios(model, spec, calibration)
            return ratios_holder["r"]

        apply, config = _diffusers_config(method, params, loop, spec, calibrate)
        apply(model, config)
        if ratios_holder:
            notes.append(f"mag_ratios from MagCache's calibration mode on seed {calibration.seed}, classes "
                         f"{list(calibration.class_labels)} (not the evaluation seeds)")
        m = _diffusers_method(row["name"], model, spec, loop, model_fn, notes)
        if ratios_holder:
            m.info = lambda: {"mag_ratios": ratios_holder["r"]}
        return m
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def run_sampling(method: Method, spec, request: SampleRequest) -> torch.Tensor:
    """One sampling run of ``request`` through ditcache's loop with ``method``."""
    method.start_run()
    return sample(method.denoiser, spec, request)


_RECOMPILES = [0]


def _count_recompiles() -> None:
    """Count dynamo's recompilations (a compile of a code object that already has cache entries) by wrapping
    ``convert_frame.is_recompilation``; installed once per process."""
    import torch._dynamo.convert_frame as convert_frame

    if getattr(convert_frame.is_recompilation, "_ditcache_counting", False):
        return
    original = convert_frame.is_recompilation

    def counting(*args, **kwargs):
        result = original(*args, **kwargs)
        if result:
            _RECOMPILES[0] += 1
        return result

    counting._ditcache_counting = True
    convert_frame.is_recompilation = counting


def dynamo_counts() -> dict[str, int]:
    """torch._dynamo's counters: graph breaks (summed over reasons), graphs compiled, recompilations."""
    from torch._dynamo.utils import counters

    _count_recompiles()
    return {"graph_breaks": int(sum(counters["graph_break"].values())),
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "recompiles": _RECOMPILES[0]}


def graph_break_reasons(limit: int = 5) -> list[str]:
    """The most frequent graph-break reasons so far (first line of each, with its count)."""
    from torch._dynamo.utils import counters

    top = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n}x {str(reason).splitlines()[0][:160]}" for reason, n in top]
