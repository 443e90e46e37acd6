"""The block-caching paper's trained scale/shift: a short distillation of the cached model's output onto the
full model's, per replayed block, per step, per channel.

Only the scale/shift tensors are trained (the model's weights stay frozen). Each epoch samples the calibration
batch once along the *cached, corrected* trajectory; at every step that replays something, the full model is
run on the same input (the teacher) and the mean squared error between the two outputs' noise channels is
back-propagated into that step's scale/shift. Caches are detached, so a step's loss trains only that step's
corrections — the same credit assignment as the closed-form fit (compiler/calibration/correction_fit.py), but judged on
the denoiser's output instead of each block's own output. After the epoch one Adam step updates all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ditcache.graphs import parts_for
from ditcache.graphs.corrections import identity_corrections, range_correction_shapes
from ditcache.graphs.plan import Plan
from ditcache.graphs.registry import ModelSpec

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, noise_prediction, sample


@dataclass(frozen=True)
class TrainingLog:
    """Mean replay-step output MSE against the full model: during each epoch (before its update) and at the end."""

    epoch_losses: tuple[float, ...]
    final_loss: float

    @property
    def initial_loss(self) -> float:
        """The loss of the starting corrections."""
        return self.epoch_losses[0] if self.epoch_losses else self.final_loss


def _run_epoch(dispatcher: Dispatcher, teacher, spec: ModelSpec, request: SampleRequest, learn: bool) -> float:
    """Sample once along the corrected trajectory, accumulating gradients; returns the mean replay-step loss."""
    losses: list[float] = []

    def student(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        replays = bool(dispatcher.plan.steps[dispatcher.step].replay)
        with torch.no_grad():
            target = noise_prediction(teacher(inputs), spec) if replays else None  # the full model's prediction
        with torch.set_grad_enabled(learn and replays):
            out = dispatcher(inputs)
            if replays:
                loss = torch.nn.functional.mse_loss(noise_prediction(out, spec).float(), target.float())
                if learn:
                    loss.backward()
                losses.append(float(loss.detach()))
        return out.detach()

    dispatcher.reset()
    sample(student, spec, request)
    return sum(losses) / max(len(losses), 1)


def train_corrections(
    model: nn.Module,
    spec: ModelSpec,
    plan: Plan,
    request: SampleRequest,
    init: Mapping[str, torch.Tensor] | None = None,
    epochs: int = 30,
    lr: float = 5e-3,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], TrainingLog]:
    """Train ``scale.<range>`` / ``shift.<range>`` (steps, *channels) for every replay of ``plan``.

    Args:
        model: the full model (frozen here; its ``requires_grad`` flags are restored afterwards).
        plan: a plan with replays (block-cache or Δ-DiT); its ``corrected`` flag is ignored.
        request: the calibration batch (``calibration_request``); every epoch samples it once.
        init: starting corrections (e.g. the closed-form fit); identity when None.
        epochs: sampling runs, one Adam step each.
        lr: Adam learning rate.
    Returns:
        the trained tensors (same keys and shapes as :func:`fit_corrections`: a row per stream for the [text; image]
        families, expanded to their tokens inside the variants) and the loss log.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if not plan.ranges:
        raise ValueError("the plan replays nothing: there is no scale/shift to train")
    parts = parts_for(model, spec)
    corrected = dataclasses.replace(plan, corrected=True)
    start = init if init is not None else identity_corrections(plan, range_correction_shapes(parts, plan))
    params = {k: v.detach().clone().float().requires_grad_(True) for k, v in start.items()}
    dispatcher = build_dispatcher(corrected, parts=parts, corrections=params, trainable=True)
    teacher = model_denoiser(model, spec)  # FLUX: its txt_ids / img_ids
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    losses: list[float] = []
    try:
        iterator = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="training scale/shift", unit="epoch")
        for _ in iterator:
            optimizer.zero_grad(set_to_none=True)
            losses.append(_run_epoch(dispatcher, teacher, spec, request, learn=True))
            optimizer.step()
        final = _run_epoch(dispatcher, teacher, spec, request, learn=False)
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    tensors = {k: v.detach().clone() for k, v in params.items()}
    return tensors, TrainingLog(tuple(losses), final)
