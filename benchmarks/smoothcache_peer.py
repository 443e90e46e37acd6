"""SmoothCache (Roblox; arXiv 2411.10510; PyPI ``dit-smoothcache`` 0.1.1, ``import SmoothCache``) as a peer.

SmoothCache's method: one calibration run (every step computed) records, for every layer of a component type
(here each ``BasicTransformerBlock``'s self-attention ``attn1`` and feed-forward ``ff``), the relative L1 distance
``‖y_{s+k} − y_s‖₁ / ‖y_{s+k}‖₁`` between its output at step s and at s + k, for k = 1 … ``lookahead``; the
distances are averaged over the blocks, and a scan with threshold α gives one static 0/1 schedule per component
type, shared by every block: at step s, take the longest k whose distance is ≤ α, compute at s and reuse that
output for the next k steps (first and last step always computed). At a reused step the block still runs its
norms and adaLN gates, and adds the cached layer output to the current residual stream.

What the installed wheel provides, and what is done here:

* ``SmoothCache.SmoothCacheHelper`` (the core) works: it replaces each wrapped component's ``forward`` by a closure
  that counts that module's calls and returns its cached output at the schedule's 0 steps. It is used as is, with
  ``block_classes=BasicTransformerBlock`` and ``components_to_wrap=["attn1", "ff"]`` (the package's
  ``DiffuserCacheHelper`` wraps ``attn1`` only; its ``DiTCacheHelper`` wraps ``attn``/``mlp`` of the original
  facebookresearch DiT and imports ``models.DiTBlock`` from that repository). Its wrapped forward ``print``s a line
  at every call; the prints are silenced by shadowing ``print`` in its module while the peer is installed.
* The calibration helpers are **not in the wheel** (its RECORD lists no ``SmoothCache/calibration/``; the
  repository's folder has no ``__init__.py``, which ``find_packages()`` skips: the likely cause); the package
  ``__init__`` catches the ``ModuleNotFoundError: No module named 'SmoothCache.calibration'`` and prints
  "CalibrationHelper not imported" and "DiffuserCalibrationHelper not imported. Ensure Diffusers is installed."
  (diffusers is installed and unrelated).
  The calibration is therefore re-implemented here from the repository's ``calibration_helper.py`` (its errors, its
  block averaging and its scan), with forward hooks that only record.

Budget: a row gives ``alpha`` (SmoothCache's threshold), or ``target_speedup``: the smallest α among the measured
distances whose schedule's MAC speedup (attention and the rest of a block apart, as peers.count_summary counts)
reaches it — how the paper matches other methods' compute; it keeps a row's budget when the weights change.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample

from .peers import Method, PeerUnavailable, block_cost_split

SMOOTHCACHE_DIST = "dit-smoothcache"
SMOOTHCACHE_VERSION = "0.1.1"
COMPONENTS = ("attn1", "ff")  # BasicTransformerBlock's self-attention and feed-forward: the schedule's keys
DEFAULT_LOOKAHEAD = 3  # the repository's run_calibration.py


def _helper_module():
    """SmoothCache's core helper module (importing the package prints its warnings: captured)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return importlib.import_module("SmoothCache.smooth_cache_helper")


def smoothcache_unavailable() -> str | None:
    """Why SmoothCache cannot run here (None: it can)."""
    hint = f"pip install 'ditcache[peers]' ({SMOOTHCACHE_DIST}=={SMOOTHCACHE_VERSION})"
    try:
        version = importlib.metadata.version(SMOOTHCACHE_DIST)
        _helper_module()
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        return f"SmoothCache is not installed ({type(exc).__name__}: {exc}); {hint}"
    if version != SMOOTHCACHE_VERSION:
        return f"{SMOOTHCACHE_DIST} {version} is installed, the comparison pins {SMOOTHCACHE_VERSION}"
    return None


# ---- calibration (SmoothCache's calibration_helper.py, which the wheel lacks) ---------------------------------
@dataclass(frozen=True)
class LayerErrors:
    """Block-averaged relative L1 distances of one component type: ``rows[k - 1][s]`` compares the output at step
    s with the output at step s + k (k = 1 … lookahead)."""

    component: str
    rows: tuple[tuple[float, ...], ...]


def _rel_l1(previous: torch.Tensor, current: torch.Tensor) -> float:
    """‖previous − current‖₁ / ‖current‖₁ over the whole batch (SmoothCache's rel_l1_loss)."""
    return float((previous.float() - current.float()).abs().sum() / current.float().abs().sum())


@torch.no_grad()
def calibrate(model: nn.Module, spec, request: SampleRequest, components: Sequence[str] = COMPONENTS,
              lookahead: int = DEFAULT_LOOKAHEAD) -> dict[str, LayerErrors]:
    """One full sampling run of ``request`` recording every block's component outputs (a sliding window of
    ``lookahead`` steps, as SmoothCache keeps), the distances averaged over the blocks per component."""
    if lookahead < 1:
        raise ValueError(f"lookahead must be at least 1 (got {lookahead})")
    blocks = list(model.transformer_blocks)
    windows: dict[tuple[str, int], deque] = {}
    errors: dict[tuple[str, int], list[list[float]]] = {}
    handles = []

    def recorder(key: tuple[str, int]):
        def hook(module, args, output):  # (B, T, D)
            window = windows.setdefault(key, deque(maxlen=lookahead))  # newest first
            rows = errors.setdefault(key, [[] for _ in range(lookahead)])
            for k, previous in enumerate(window):
                rows[k].append(_rel_l1(previous, output))
            window.appendleft(output.detach().clone())

        return hook

    for i, block in enumerate(blocks):
        for name in components:
            if not hasattr(block, name):
                raise ValueError(f"{type(block).__name__} has no component {name!r} (choose from {COMPONENTS})")
            handles.append(getattr(block, name).register_forward_hook(recorder((name, i))))
    try:
        sample(model_denoiser(model), spec, request)
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name in components:
        per_block = [errors[(name, i)] for i in range(len(blocks))]
        rows = tuple(tuple(sum(b[k][s] for b in per_block) / len(per_block) for s in range(len(per_block[0][k])))
                     for k in range(lookahead))
        out[name] = LayerErrors(name, rows)
    return out


def scan(errors: LayerErrors, alpha: float, steps: int) -> list[int]:
    """SmoothCache's schedule for one component (1: compute, 0: reuse): at step s take the longest look-ahead k with
    distance ≤ ``alpha``, compute at s and reuse for the next k steps; first and last step always computed."""
    schedule = [1] * steps
    s = 0
    while s < steps:
        for k in range(len(errors.rows), 0, -1):
            row = errors.rows[k - 1]
            if s < len(row) and row[s] <= alpha:
                for j in range(s + 1, min(s + k, steps - 1) + 1):
                    schedule[j] = 0
                s += k + 1
                break
        else:
            s += 1
    schedule[0] = schedule[-1] = 1
    return schedule


def schedule_speedup(spec, schedule: Mapping[str, Sequence[int]], steps: int) -> float:
    """Full MACs over the MACs of ``schedule`` (a reused ``attn1`` saves the attention, a reused ``ff`` the rest of
    the block, as peers.count_summary counts)."""
    from ditcache.graphs import costs_for

    full = steps * costs_for(spec, 1).full
    saved_per_block = dict(zip(COMPONENTS, block_cost_split(spec)))
    saved = sum(spec.num_blocks * saved_per_block[name] * (steps - sum(marks)) for name, marks in schedule.items())
    return full / (full - saved)


def schedules_for(errors: Mapping[str, LayerErrors], alpha: float, steps: int) -> dict[str, list[int]]:
    """One schedule per component at threshold ``alpha``."""
    return {name: scan(e, alpha, steps) for name, e in errors.items()}


def alpha_for_speedup(spec, errors: Mapping[str, LayerErrors], steps: int, target: float) -> tuple[float, float]:
    """The smallest α (among the measured distances: the schedule changes only there) whose schedule's MAC speedup
    reaches ``target``; returns (α, its speedup)."""
    candidates = sorted({0.0, *(v for e in errors.values() for row in e.rows for v in row)})
    best = 1.0
    for alpha in candidates:
        speedup = schedule_speedup(spec, schedules_for(errors, alpha, steps), steps)
        if speedup >= target:
            return alpha, speedup
        best = max(best, speedup)
    raise ValueError(f"no SmoothCache threshold reaches {target}x MACs on this calibration (at most {best:.2f}x with "
                     f"this look-ahead); lower target_speedup or raise lookahead")


# ---- the peer ---------------------------------------------------------------------------------------------
def _silence(module, on: bool) -> None:
    """Shadow (or restore) ``print`` in SmoothCache's helper module: its wrapped forward prints at every call."""
    if on:
        module.print = lambda *args, **kwargs: None
    else:
        module.__dict__.pop("print", None)


def smoothcache_method(name: str, model: nn.Module, spec, steps: int, params: Mapping[str, Any], model_fn,
                       calibration: SampleRequest | None) -> Method:
    """The SmoothCache row: calibrate on ``calibration`` (or take ``smoothcache_schedule``), then its helper."""
    reason = smoothcache_unavailable()
    if reason:
        raise PeerUnavailable(reason)
    from diffusers.models.attention import BasicTransformerBlock

    p = dict(params)
    components = list(p.pop("components", COMPONENTS))
    lookahead = int(p.pop("lookahead", DEFAULT_LOOKAHEAD))
    alpha, target, given = p.pop("alpha", None), p.pop("target_speedup", None), p.pop("smoothcache_schedule", None)
    if p:
        raise ValueError(f"smoothcache row {name!r}: unknown parameter(s) {sorted(p)} (alpha, target_speedup, "
                         f"lookahead, components, smoothcache_schedule)")
    info: dict[str, Any] = {}
    if given is not None:
        schedule = {k: [int(v) for v in marks] for k, marks in given.items()}
        source = "the row's smoothcache_schedule"
    else:
        if (alpha is None) == (target is None):
            raise ValueError(f"smoothcache row {name!r}: give exactly one of alpha and target_speedup")
        if calibration is None:
            raise ValueError("smoothcache needs a calibration request (the config's calibration block)")
        errors = calibrate(model, spec, calibration, components, lookahead)
        if target is not None:
            alpha, _ = alpha_for_speedup(spec, errors, steps, float(target))
        schedule = schedules_for(errors, float(alpha), steps)
        info["smoothcache_errors"] = {k: [list(r) for r in e.rows] for k, e in errors.items()}
        source = (f"calibrated on seed {calibration.seed}, classes {list(calibration.class_labels)} (not the "
                  f"evaluation seeds), look-ahead {lookahead}, α = {float(alpha):.4g}"
                  + (f" (solved for {target}x MACs)" if target is not None else ""))
    bad = {k: len(v) for k, v in schedule.items() if len(v) != steps or k not in COMPONENTS}
    if bad:
        raise ValueError(f"smoothcache schedule: every key one of {COMPONENTS} with {steps} entries (got {bad})")
    info.update(smoothcache_schedule=schedule, smoothcache_alpha=None if alpha is None else float(alpha),
                smoothcache_mac_speedup=schedule_speedup(spec, schedule, steps))
    module = _helper_module()
    helper = module.SmoothCacheHelper(model, block_classes=BasicTransformerBlock,
                                      components_to_wrap=list(schedule), schedule=schedule)
    _silence(module, True)
    helper.enable()
    wrapped = [getattr(b, c) for b in model.transformer_blocks for c in schedule]
    run = model_denoiser(model if model_fn is None else model_fn)  # no `or`: a compiled module has no truth value

    def remove() -> None:
        helper.disable()
        for component in wrapped:  # disable() leaves the bound original as an instance attribute
            component.__dict__.pop("forward", None)
        _silence(module, False)

    return Method(name, "smoothcache", run, helper.reset_state, remove, lambda: dict(info),
                  notes=[f"SmoothCache {SMOOTHCACHE_VERSION} SmoothCacheHelper on BasicTransformerBlock "
                         f"{'/'.join(schedule)}; schedule {source}; its per-call prints silenced"])
