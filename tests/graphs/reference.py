"""An independent reference for cached steps: diffusers' own forward with blocks swapped out.

It never touches ditcache's segments or interpreter: replayed blocks are replaced inside the diffusers
model's ModuleList, and recorded values are captured with forward hooks.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class _Replaced(nn.Module):
    """Stands in for a block: h -> fn(h); keeps norm1 (diffusers' tail reads block 0's embedding)."""

    def __init__(self, block: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.norm1 = block.norm1
        self.fn = fn

    def forward(self, hidden_states, **_):
        return self.fn(hidden_states)


@torch.no_grad()
def reference_step(model, inputs, replace: dict[int, Callable], capture: list[int] = ()):
    """Run diffusers' forward with blocks in ``replace`` swapped for functions; returns the output and the
    (input, output) hidden state of every block index in ``capture``."""
    original = model.transformer_blocks
    captured: dict[int, list[torch.Tensor]] = {}
    handles = []
    for i in capture:
        handles.append(original[i].register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: captured.setdefault(i, [None, None]).__setitem__(0, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True))
        handles.append(original[i].register_forward_hook(
            lambda mod, args, out, i=i: captured.setdefault(i, [None, None]).__setitem__(1, out)))
    model.transformer_blocks = nn.ModuleList(
        [_Replaced(b, replace[i]) if i in replace else b for i, b in enumerate(original)]
    )
    try:
        out = model(inputs["x"], timestep=inputs["timestep"], class_labels=inputs["class_labels"]).sample
    finally:
        model.transformer_blocks = original
        for h in handles:
            h.remove()
    return out, captured


def skip_range(start: int, end: int, fn: Callable) -> dict[int, Callable]:
    """Replace blocks [start, end) by one function applied at ``start`` (the rest pass through)."""
    table = {start: fn}
    table.update({i: (lambda h: h) for i in range(start + 1, end)})
    return table
