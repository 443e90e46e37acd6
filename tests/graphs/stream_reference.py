"""An independent reference for cached steps of FLUX, SD3 and Wan: diffusers' own forward with blocks swapped.

It never touches ditcache's segments or interpreter. The blocks of the model's ModuleLists (FLUX: dual-stream,
then single-stream) form one chain; a replaced block is a stand-in that maps the hidden state it reads to the one
it returns, and recorded values are captured with forward hooks. For the two-stream families the hidden state
is rebuilt here from each block's own arguments as [text; image]; SD3's last block returns no text, which the
reference reads as "the text it was given".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

Fn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Chain:
    """How a family's blocks read and return the hidden state."""

    lists: tuple[str, ...]  # the model's ModuleList attributes, in forward order
    hidden_in: Callable[[tuple, dict], torch.Tensor]
    hidden_out: Callable[[tuple, dict, Any], torch.Tensor]
    returning: Callable[[torch.Tensor, tuple, dict], Any]  # a stand-in block's return value for a new hidden state


def _joined_in(args: tuple, kwargs: dict) -> torch.Tensor:
    return torch.cat([kwargs["encoder_hidden_states"], kwargs["hidden_states"]], dim=1)


def _joined_out(args: tuple, kwargs: dict, out) -> torch.Tensor:
    text, image = out
    return torch.cat([kwargs["encoder_hidden_states"] if text is None else text, image], dim=1)


def _split(h: torch.Tensor, args: tuple, kwargs: dict):
    length = kwargs["encoder_hidden_states"].shape[1]
    return h[:, :length], h[:, length:]


FLUX = Chain(("transformer_blocks", "single_transformer_blocks"), _joined_in, _joined_out, _split)
SD3 = Chain(("transformer_blocks",), _joined_in, _joined_out, _split)
WAN = Chain(("blocks",), lambda args, kwargs: args[0], lambda args, kwargs, out: out, lambda h, args, kwargs: h)


class _StandIn(nn.Module):
    def __init__(self, chain: Chain, fn: Fn):
        super().__init__()
        self.chain, self.fn = chain, fn

    def forward(self, *args, **kwargs):
        return self.chain.returning(self.fn(self.chain.hidden_in(args, kwargs)), args, kwargs)


@torch.no_grad()
def reference_step(model: nn.Module, chain: Chain, call: Callable[[nn.Module], torch.Tensor],
                   replace: dict[int, Fn], capture: Sequence[int] = ()) -> tuple[torch.Tensor, dict]:
    """``call(model)`` with chain blocks in ``replace`` swapped for functions of the hidden state; returns its
    output and the (input, output) hidden states of the blocks in ``capture``."""
    originals = {name: getattr(model, name) for name in chain.lists}
    blocks = [b for name in chain.lists for b in originals[name]]
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [blocks[i].register_forward_hook(
        lambda mod, args, kwargs, out, i=i: captured.__setitem__(
            i, (chain.hidden_in(args, kwargs), chain.hidden_out(args, kwargs, out))), with_kwargs=True)
        for i in capture]
    position = 0
    for name in chain.lists:
        count = len(originals[name])
        setattr(model, name, nn.ModuleList([_StandIn(chain, replace[position + k]) if position + k in replace else b
                                            for k, b in enumerate(originals[name])]))
        position += count
    try:
        out = call(model)
    finally:
        for name, original in originals.items():
            setattr(model, name, original)
        for handle in handles:
            handle.remove()
    return out, captured


def skip_range(start: int, end: int, fn: Fn) -> dict[int, Fn]:
    """Replace blocks [start, end) by one function applied at ``start`` (the rest pass the state through)."""
    return {start: fn, **{i: (lambda h: h) for i in range(start + 1, end)}}


def delta_dit_reference(model, chain, calls, num_blocks: int, boundary: int, interval: int, cached: int):
    """Δ-DiT by hand: full steps every ``interval`` steps and at the boundary record the front and back ranges'
    offsets; other steps replay the back range (before the boundary) or the front one (after)."""
    front, back = (0, cached), (num_blocks - cached, num_blocks)
    delta, outs, full_outs = {}, [], []
    for s, call in enumerate(calls):
        if s % interval == 0 or s == boundary:
            ends = sorted({front[0], back[0], front[1] - 1, back[1] - 1})
            out, cap = reference_step(model, chain, call, {}, capture=ends)
            delta["front"] = cap[front[1] - 1][1] - cap[front[0]][0]
            delta["back"] = cap[back[1] - 1][1] - cap[back[0]][0]
            full = out
        else:
            name, (a, b) = ("back", back) if s < boundary else ("front", front)
            out, _ = reference_step(model, chain, call, skip_range(a, b, lambda h, d=delta[name]: h + d))
            full, _ = reference_step(model, chain, call, {})
        outs.append(out)
        full_outs.append(full)
    return outs, full_outs


def block_cache_reference(model, chain, calls, num_blocks: int, recompute: dict[int, list[int]], mode: str,
                          scale=None, shift=None):
    """Block caching by hand: each listed block's residual (``offset``) or output kept from its last compute,
    optionally corrected per step as ``scale * cached + shift``; returns the outputs and the kept values."""
    cache, outs, kept = {}, [], []
    for s, call in enumerate(calls):
        replaced = {}
        for i, steps in recompute.items():
            if s not in steps:
                value = cache[i] if scale is None else cache[i] * scale[i][s] + shift[i][s]
                replaced[i] = (lambda h, v=value: h + v) if mode == "offset" else (lambda h, v=value: v)
        out, cap = reference_step(model, chain, call, replaced,
                                  capture=[i for i in range(num_blocks) if i not in replaced])
        for i in recompute:
            if i not in replaced:
                h_in, h_out = cap[i]
                cache[i] = h_out - h_in if mode == "offset" else h_out
        outs.append(out)
        kept.append(dict(cache))
    return outs, kept


def per_token(table: torch.Tensor, text_length: int, tokens: int) -> torch.Tensor:
    """A (2, D) per-stream row table as the (L + T, D) table of the joined tokens, written here with a mask of the
    token positions (not the parts' slices): row 0 on the first ``text_length`` tokens, row 1 on the rest."""
    is_text = (torch.arange(tokens) < text_length)[:, None]  # (L + T, 1)
    return torch.where(is_text, table[0], table[1])  # (L + T, D)


def chained(parts, inputs: dict, cuts: Sequence[int]) -> torch.Tensor:
    """ditcache's side: head, the block segments between ``cuts``, tail, values passed by name."""
    head = parts.head()
    env = dict(inputs)
    env.update(zip(head.outputs, head(*(inputs[n] for n in head.inputs))))
    for a, b in zip(cuts[:-1], cuts[1:]):
        seg = parts.blocks(a, b)
        env["h"] = seg(*(env[n] for n in seg.inputs))
    tail = parts.tail()
    return tail(*(env[n] for n in tail.inputs))


_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # see tests/graphs/test_macs.py


def counted_macs(fn, *args):
    """(MACs FlopCounterMode counts while running fn, with torch's sdpa formula for the CPU kernel; fn's result)."""
    mapping = {_CPU_SDPA: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as flops:
        out = fn(*args)
    return flops.get_total_flops() // 2, out
