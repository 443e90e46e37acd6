"""The three programs of an adaptive plan as pure, flat-signature modules (whole graphs for any backend).

probe(*model_inputs, probe_ref) -> (h, *carried, probe, signal): head and blocks [0, start); ``probe`` is the
signal's value (the probe blocks' residual, or block ``start``'s modulated input) and ``signal`` (B,) its relative
L1 change against ``probe_ref`` (the previous step's probe), per row: ‖probe − ref‖₁ / ‖ref‖₁.
compute(h, *carried, *conditioning) -> (out, new_cache_rest): blocks [start, Nb) and the tail, recording the replay
range's residual (or output). replay(h, *carried, *conditioning, cache_rest) -> (out,): ``h + Δ`` (or the recorded
output), then blocks [end, Nb) and the tail. Nothing data-dependent inside: the choice is the dispatcher's.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .adaptive import AdaptivePlan
from .plan import PlanError
from .segments import DenoiserParts, Segment
from .variants import cache_input_name, cache_output_name, replay

PROBE_REF = "probe_ref"
PROBE = "probe"
SIGNAL = "signal"
CACHE_IN = cache_input_name("rest")
CACHE_OUT = cache_output_name("rest")


def relative_l1_rows(current: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row ‖current − reference‖₁ / ‖reference‖₁ (B,), in float32; a zero reference gives a huge value."""
    diff = (current.float() - reference.float()).flatten(1).abs().sum(1)  # (B,)
    return diff / reference.float().flatten(1).abs().sum(1).clamp(min=1e-12)  # (B,)


class ModulatedInput(nn.Module):
    """A diffusers BasicTransformerBlock's timestep-modulated input (what its self-attention sees), TeaCache's
    signal: adaLN-zero blocks (DiT) modulate from (timestep, class); adaLN-single blocks (PixArt) from the
    shared timestep embedding and the block's scale/shift table."""

    def __init__(self, block: nn.Module, block_inputs: tuple[str, ...], hidden: str):
        super().__init__()
        self.norm_type = getattr(block, "norm_type", None)
        if self.norm_type not in ("ada_norm_zero", "ada_norm_single"):
            raise PlanError(f"the modulated-input signal needs adaLN blocks (DiT, PixArt); this model's blocks are "
                            f"{type(block).__name__} (norm {self.norm_type!r}): use signal: first-block")
        self.norm1 = block.norm1
        if self.norm_type == "ada_norm_single":
            self.scale_shift_table = block.scale_shift_table
            self.inputs = (hidden, block_inputs[0])  # the timestep embedding (B, 6D)
        else:
            self.inputs = (hidden, *block_inputs)  # timestep, class labels

    def forward(self, h: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        if self.norm_type == "ada_norm_zero":
            return self.norm1(h, cond[0], cond[1], hidden_dtype=h.dtype)[0]  # (B, T, D)
        shift, scale = (self.scale_shift_table[None] + cond[0].reshape(h.shape[0], 6, -1)).chunk(6, dim=1)[:2]
        return self.norm1(h) * (1 + scale) + shift  # (B, T, D) * (B, 1, D) + (B, 1, D)


def adaptive_segments(parts: DenoiserParts, plan: AdaptivePlan) -> dict[str, Segment]:
    """head, probe blocks [0, start), the replay range [start, end), blocks [end, Nb) and the tail, as present."""
    if getattr(parts, "link", None) is not None:
        raise PlanError("kind adaptive needs a chain of blocks on one hidden state; U-Nets are refused")
    r, n = plan.replay_range, plan.num_blocks
    segments = {"head": parts.head()}
    for name, (a, b) in (("probe_blocks", (0, r.start)), ("range", (r.start, r.end)), ("after", (r.end, n))):
        if a < b:
            seg = parts.blocks(a, b)
            if tuple(seg.outputs) != (parts.hidden_name,):
                raise PlanError(f"blocks [{a}, {b}) also produce {seg.outputs}: kind adaptive replays one hidden "
                                f"state only (this family updates several streams)")
            segments[name] = seg
    segments["tail"] = parts.tail()
    return segments


def _run(module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...], env: dict[str, torch.Tensor]) -> None:
    out = module(*(env[k] for k in inputs))
    env.update(zip(outputs, (out,) if isinstance(out, torch.Tensor) else out))


class _Program(nn.Module):
    """Shared layout of the three programs."""

    def __init__(self, parts: DenoiserParts, plan: AdaptivePlan, segments: Mapping[str, Segment] | None = None):
        super().__init__()
        self.plan = plan
        self.hidden = parts.hidden_name
        self.output_name = parts.output_name
        segs = dict(segments) if segments is not None else adaptive_segments(parts, plan)
        self.present = frozenset(segs)
        self.segment_modules = nn.ModuleDict({k: s.module for k, s in segs.items()})
        self.segment_io = {k: (tuple(s.inputs), tuple(s.outputs)) for k, s in segs.items()}
        self.model_inputs = tuple(parts.input_names)
        later = [segs[k] for k in ("range", "after", "tail") if k in segs]
        read = dict.fromkeys(n for s in later for n in s.inputs if n != self.hidden)
        self.carried = tuple(n for n in read if n not in self.model_inputs)  # computed by the head (PixArt)
        self.conditioning = tuple(n for n in read if n in self.model_inputs)
        if plan.policy.signal == "modulated-input":
            block_inputs = tuple(n for n in parts.blocks(plan.replay_range.start, plan.replay_range.start + 1).inputs
                                 if n != self.hidden)
            self.modulation = ModulatedInput(parts.model.transformer_blocks[plan.replay_range.start], block_inputs,
                                             self.hidden)
            for name in self.modulation.inputs[1:]:
                if name not in self.model_inputs and name not in self.carried:
                    self.carried += (name,)

    def _run(self, name: str, env: dict[str, torch.Tensor]) -> None:
        _run(self.segment_modules[name], *self.segment_io[name], env)

    @property
    def continuation_inputs(self) -> tuple[str, ...]:
        return (self.hidden, *self.carried, *self.conditioning)


class ProbeProgram(_Program):
    """probe(*model_inputs, probe_ref) -> (h, *carried, probe, signal)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self.model_inputs, PROBE_REF)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.hidden, *self.carried, PROBE, SIGNAL)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.input_names, args))
        self._run("head", env)
        h0 = env[self.hidden]  # (B, T, D)
        if "probe_blocks" in self.present:
            self._run("probe_blocks", env)
        if self.plan.policy.signal == "modulated-input":
            probe = self.modulation(*(env[n] for n in self.modulation.inputs))  # (B, T, D)
        else:
            probe = env[self.hidden] - h0  # (B, T, D): the probe blocks' residual
        signal = relative_l1_rows(probe, env[PROBE_REF])  # (B,)
        return (env[self.hidden], *(env[n] for n in self.carried), probe, signal)


class ComputeProgram(_Program):
    """compute(h, *carried, *conditioning) -> (out, new_cache_rest)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.continuation_inputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output_name, CACHE_OUT)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.input_names, args))
        start = env[self.hidden]  # (B, T, D)
        self._run("range", env)
        recorded = env[self.hidden] - start if self.plan.cache == "offset" else env[self.hidden]
        if "after" in self.present:
            self._run("after", env)
        self._run("tail", env)
        return env[self.output_name], recorded


class ReplayProgram(_Program):
    """replay(h, *carried, *conditioning, cache_rest) -> (out,)."""

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self.continuation_inputs, CACHE_IN)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (self.output_name,)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = dict(zip(self.input_names, args))
        env[self.hidden] = replay(env[self.hidden], env[CACHE_IN], self.plan.cache)  # (B, T, D)
        if "after" in self.present:
            self._run("after", env)
        self._run("tail", env)
        return (env[self.output_name],)


PROGRAM_CLASSES = {"probe": ProbeProgram, "compute": ComputeProgram, "replay": ReplayProgram}


def program_modules(parts: DenoiserParts, plan: AdaptivePlan) -> dict[str, _Program]:
    """The three programs over one set of segments (the model's parameters, shared)."""
    segments = adaptive_segments(parts, plan)
    return {name: cls(parts, plan, segments) for name, cls in PROGRAM_CLASSES.items()}
