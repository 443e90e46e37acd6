"""Training-free scale/shift for replayed blocks: per block, per step, per channel least squares."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

import torch

from ditcache.graphs import parts_for
from ditcache.graphs.corrections import identity_corrections, range_correction_shapes
from ditcache.graphs.plan import Plan
from ditcache.graphs.registry import ModelSpec
from ditcache.graphs.streams import Streams, expand_correction, streams_of

from ditcache.compiler.atomic import atomic_path
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.prompts import PromptEmbeddings
from ditcache.compiler.runtime.sampling import SampleRequest, sample


def least_squares_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6,
                         channel_shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale, shift`` minimising ‖scale·x + shift − y‖² over all other dims.

    Channels are the last dim, or the dim a ``channel_shape`` broadcast aligns with (``(C, 1, 1)``: dim 1 of
    (B, C, H, W) feature maps); the results have ``channel_shape`` (default ``(D,)``). A channel whose cached
    values do not vary keeps scale 1 and gets only the mean offset.
    """
    shape = tuple(channel_shape) if channel_shape is not None else (x.shape[-1],)
    axis = x.ndim - len(shape)
    xs = x.movedim(axis, -1).reshape(-1, x.shape[axis]).double()  # (N, D)
    ys = y.movedim(axis, -1).reshape(-1, y.shape[axis]).double()
    mx, my = xs.mean(0), ys.mean(0)
    var = ((xs - mx) ** 2).mean(0)  # (D,)
    cov = ((xs - mx) * (ys - my)).mean(0)
    flat = var <= ridge * (ys.var(0) + 1e-12)
    scale = torch.where(flat, torch.ones_like(var), cov / var.clamp(min=1e-30))
    shift = my - scale * mx
    return scale.float().reshape(shape), shift.float().reshape(shape)


def least_squares_affine_streams(x: torch.Tensor, y: torch.Tensor, streams: Streams, ridge: float = 1e-6,
                                 shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-stream, per-channel ``scale, shift`` (S, D) of (B, L + T, D) values whose tokens are ``streams``' (text,
    then image): each row fitted on its stream's tokens alone, or, ``shared``, one (D,) fit over all tokens in
    every row (the per-channel correction in the per-stream layout)."""
    if shared:
        scale, shift = least_squares_affine(x, y, ridge)  # (D,)
        return scale.expand(streams.rows, -1).clone(), shift.expand(streams.rows, -1).clone()
    fits = [least_squares_affine(xs, ys, ridge) for xs, ys in zip(streams.split(x, -2), streams.split(y, -2))]
    return torch.stack([f[0] for f in fits]), torch.stack([f[1] for f in fits])  # (S, D) each


def fit_affine(x: torch.Tensor, y: torch.Tensor, table_shape: tuple[int, ...], streams: Streams | None,
               shared_streams: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares scale/shift of a replayed range in its table's shape: per stream and channel where the
    hidden state joins ``streams``, else per channel."""
    if streams is None:
        return least_squares_affine(x, y, channel_shape=table_shape)
    return least_squares_affine_streams(x, y, streams, shared=shared_streams)


@torch.no_grad()
def fit_corrections(model: torch.nn.Module, spec: ModelSpec, plan: Plan, request: SampleRequest,
                    progress: bool = False, shared_streams: bool = False) -> dict[str, torch.Tensor]:
    """Fit ``scale.<range>`` / ``shift.<range>`` (steps, D) for every replay of ``plan`` — (steps, 2, D) for the
    [text; image] families, a text row fitted on the text tokens and an image row on the image tokens (with
    ``shared_streams``, one fit over both in both rows: the per-channel correction, for comparison).

    All calibration images run as one batch; at each replay the range's true output is computed from the
    same input, the affine map from the replayed to the true value is fitted, and the *corrected* value
    continues the trajectory — so later steps are fitted on the trajectory the correction will produce.
    Steps where a range is not replayed keep scale 1, shift 0.
    """
    parts = parts_for(model, spec)
    widths = range_correction_shapes(parts, plan)  # (D,) for token sequences, (C, 1, 1) for U-Nets, (2, D) per stream
    streams = streams_of(parts)
    tensors = identity_corrections(plan, widths)
    state = {"dispatcher": None}

    def observe(name, h_in, replayed, truth):
        step = state["dispatcher"].step
        true_out = truth()
        if plan.cache == "offset":
            x, y = replayed - h_in, true_out - h_in  # (B, T, D) cached Δ and the true one
        else:
            x, y = replayed, true_out
        scale, shift = fit_affine(x, y, widths[name], streams, shared_streams)
        tensors[f"scale.{name}"][step] = scale
        tensors[f"shift.{name}"][step] = shift
        corrected = x * expand_correction(scale, streams) + expand_correction(shift, streams)
        return h_in + corrected if plan.cache == "offset" else corrected

    uncorrected = replace(plan, corrected=False, corrections=None)
    dispatcher = build_dispatcher(uncorrected, parts=parts, on_replay=observe)
    state["dispatcher"] = dispatcher
    dispatcher.reset()
    sample(dispatcher, spec, request, progress=progress)
    return tensors


def save_corrections(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """safetensors file for schedule.yaml's ``scale_shift:`` (atomic)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, _default_file_mode())  # safetensors creates its files 0600


def _default_file_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would have given a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def calibration_request(classes: Sequence[int], seeds: Sequence[int], steps: int, guidance: float,
                        scheduler: str, prompts: PromptEmbeddings | None = None) -> SampleRequest:
    """One batch holding every (class, seed) pair — for text models every (prompt, seed) pair, ``classes`` empty —
    each image with its own noise seed."""
    if prompts is not None:
        rows = [(i, s * 1000 + i) for s in seeds for i in range(prompts.num_images)]
        return SampleRequest((), steps, guidance, 0, scheduler, tuple(s for _, s in rows),
                             prompts.select([i for i, _ in rows]))
    pairs = [(c, s * 1000 + i) for s in seeds for i, c in enumerate(classes)]
    return SampleRequest(tuple(c for c, _ in pairs), steps, guidance, 0, scheduler, tuple(s for _, s in pairs))
