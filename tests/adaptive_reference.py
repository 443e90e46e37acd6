"""An independent reference for adaptive schedules: a plain loop over the diffusers model that makes the decisions
the policy describes (docs/adaptive.md), written from its text. It never touches ditcache's segments, programs,
decider or dispatcher: block values are captured with hooks on the diffusers blocks, replays swap the blocks out
inside the diffusers model's ModuleList."""

from __future__ import annotations

import torch
from torch import nn


class _Identity(nn.Module):
    """Stands in for a replayed block; keeps norm1 (DiT's output layer reads block 0's embedding)."""

    def __init__(self, block: nn.Module, fn=None):
        super().__init__()
        self.norm1 = block.norm1
        self.fn = fn

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.fn is None else self.fn(hidden_states)


def call_model(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """diffusers' own forward on ditcache's named inputs (DiT: class labels; PixArt: text)."""
    if "class_labels" in inputs:
        return model(inputs["x"], timestep=inputs["timestep"], class_labels=inputs["class_labels"]).sample
    return model(inputs["x"], encoder_hidden_states=inputs["encoder_hidden_states"],
                 encoder_attention_mask=inputs["encoder_attention_mask"], timestep=inputs["timestep"],
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


def modulated(block: nn.Module, h: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The block's timestep-modulated input, as diffusers' BasicTransformerBlock computes it."""
    if block.norm_type == "ada_norm_zero":
        return block.norm1(h, kwargs["timestep"], kwargs["class_labels"], hidden_dtype=h.dtype)[0]
    table = block.scale_shift_table[None] + kwargs["timestep"].reshape(h.shape[0], 6, -1)
    shift, scale = table[:, 0:1], table[:, 1:2]
    return block.norm1(h) * (1 + scale) + shift


class AdaptiveReference:
    """Denoiser callable: per step, run the model; probe = the residual of blocks [0, start) (first-block) or block
    ``start``'s modulated input; per row, d = |probe - previous probe|_1 / |previous probe|_1 (rescaled by the
    polynomial, clipped at 0); accumulate since the last computed step; replay blocks [start, end) as h + Δ when
    the step is not warm-up/final, fewer than ``cap`` replays precede it in a row and every row's accumulated
    value stays below the threshold."""

    def __init__(self, model, *, steps, threshold, signal="first-block", start=1, end=None, warmup=2, final=1,
                 cap=3, rescale=()):
        self.model, self.steps, self.threshold, self.signal = model, steps, threshold, signal
        self.start, self.end = start, end if end is not None else len(model.transformer_blocks)
        self.warmup, self.final, self.cap, self.rescale = warmup, final, cap, list(rescale)
        self.reset()

    def reset(self):
        self.step, self.previous, self.delta, self.acc, self.run = 0, None, None, None, 0
        self.programs: list[str] = []

    def _scale(self, d: float) -> float:
        if not self.rescale:
            return d
        value = 0.0
        for c in self.rescale:
            value = value * d + c
        return max(value, 0.0)

    @torch.no_grad()
    def __call__(self, inputs):
        blocks = self.model.transformer_blocks
        seen = {}
        hooks = [blocks[0].register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("in0", a[0] if a else k["hidden_states"]), with_kwargs=True),
            blocks[self.start].register_forward_pre_hook(
                lambda m, a, k: seen.__setitem__("start", (a[0] if a else k["hidden_states"], k)), with_kwargs=True),
            blocks[self.end - 1].register_forward_hook(lambda m, a, out: seen.__setitem__("end", out))]
        try:
            full = call_model(self.model, inputs)
        finally:
            for h in hooks:
                h.remove()
        h_start, kwargs = seen["start"]
        if self.signal == "first-block":
            probe = h_start - seen["in0"]
        else:
            probe = modulated(blocks[self.start], h_start, kwargs)
        fixed = self.step < self.warmup or self.step >= self.steps - self.final
        replay = False
        if not fixed:
            d = (probe - self.previous).flatten(1).abs().sum(1) / self.previous.flatten(1).abs().sum(1)
            value = torch.tensor([self._scale(float(v)) for v in d], dtype=torch.float64)
            candidate = value if self.acc is None else self.acc + value
            replay = self.run < self.cap and float(candidate.max()) < self.threshold
            self.acc = candidate if replay else None
        if fixed:
            self.acc = None
        self.previous = probe
        if replay:
            self.run += 1
            delta = self.delta
            original = blocks
            swapped = [_Identity(b) if self.start < i < self.end else b for i, b in enumerate(original)]
            swapped[self.start] = _Identity(original[self.start], lambda h: h + delta)
            self.model.transformer_blocks = nn.ModuleList(swapped)
            try:
                out = call_model(self.model, inputs)
            finally:
                self.model.transformer_blocks = original
        else:
            self.run = 0
            self.delta = seen["end"] - h_start
            out = full
        self.programs.append("replay" if replay else "compute")
        self.step += 1
        return out
