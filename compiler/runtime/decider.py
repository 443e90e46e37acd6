"""Run-time decisions of an adaptive plan: the budget state, the record of a run, and the dispatcher that calls the
probe graph and then one of the two continuation graphs. The graphs stay pure and whole; the one read per step is
the probe's (B,) signal, copied to the host at the steps that are decided (none at fixed steps)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch

from ditcache.graphs.adaptive import AdaptivePlan, AdaptivePolicy
from ditcache.graphs.adaptive_programs import CACHE_IN, CACHE_OUT, PROBE, PROBE_REF, SIGNAL

# named inputs -> named outputs (the program's GraphSpec names)
OUT = "out"  # the denoiser output of the continuations (every family names it so)
ProgramFn = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Decision:
    """One step of an adaptive run.

    Args:
        step: the step index.
        program: ``compute`` or ``replay`` (the continuation that ran after the probe).
        fixed: a warm-up or final step (no signal read).
        signal: the largest row's rescaled signal of this step (None at fixed steps).
        accumulated: the largest row's accumulated value with this step's signal (what was compared with the
            threshold; after a compute the budget starts again from 0; 0 at fixed steps).
        reason: why (``warm-up/final``, ``under budget``, ``over budget``, ``cap``).
    """

    step: int
    program: str
    fixed: bool
    signal: float | None
    accumulated: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


class Decider:
    """The budget of one run, per row of the batch: replay while every row's accumulated rescaled signal stays
    below the threshold (the batch rule: max over rows), at most ``max_consecutive`` in a row."""

    def __init__(self, policy: AdaptivePolicy):
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self.accumulated: torch.Tensor | None = None  # (B,) float64
        self.consecutive = 0
        self.decisions: list[Decision] = []

    def fixed(self, step: int) -> None:
        """Record a fixed (computed) step; the budget starts again."""
        self.accumulated, self.consecutive = None, 0
        self.decisions.append(Decision(step, "compute", True, None, 0.0, "warm-up/final"))

    def decide(self, step: int, signal: torch.Tensor) -> bool:
        """True to replay at ``step`` given the probe's per-row signal (B,) on the host."""
        rows = [self.policy.rescaled(float(v)) for v in signal.double().tolist()]
        value = torch.tensor(rows, dtype=torch.float64)
        candidate = value if self.accumulated is None else self.accumulated + value
        top = float(candidate.max())
        if self.consecutive >= self.policy.max_consecutive:
            replayed, reason = False, "cap"
        elif top < self.policy.threshold:
            replayed, reason = True, "under budget"
        else:
            replayed, reason = False, "over budget"
        if replayed:
            self.accumulated, self.consecutive = candidate, self.consecutive + 1
        else:
            self.accumulated, self.consecutive = None, 0
        self.decisions.append(Decision(step, "replay" if replayed else "compute", False, max(rows), top, reason))
        return replayed

    @property
    def replayed(self) -> int:
        return sum(d.program == "replay" for d in self.decisions)


class AdaptiveDispatcher:
    """Runs an adaptive plan: at every step the probe, then compute or replay; owns the cache, the probe reference
    and the decision record (``decisions``, reset with the run).

    Args:
        plan: the adaptive plan.
        programs: ``probe``, ``compute``, ``replay`` callables over named tensors (any backend).
        probe_shape: model batch -> shape of the probe value (the zero reference of step 0).
        sync: called before reading a clock when timing.
    """

    corrections = None

    def __init__(self, plan: AdaptivePlan, programs: Mapping[str, ProgramFn],
                 probe_shape: Callable[[int], tuple[int, ...]], sync: Callable[[], None] | None = None):
        missing = [p for p in plan.programs if p not in programs]
        if missing:
            raise ValueError(f"no callable for adaptive program(s) {missing}; the backend built {sorted(programs)}")
        self.plan = plan
        self.programs = dict(programs)
        self.variants = self.programs  # the loaded callables by name, as a Dispatcher's (benchmarks list them)
        self.probe_shape = probe_shape
        self.sync = sync
        self.timing = False
        self.decider = Decider(plan.policy)
        self.reset()

    def fresh(self) -> "AdaptiveDispatcher":
        """Another dispatcher over the same (stateless) programs, with its own state."""
        return AdaptiveDispatcher(self.plan, self.programs, self.probe_shape, self.sync)

    def reset(self) -> None:
        """Forget the cache, the probe reference and the decisions; start again at step 0."""
        self.step = 0
        self.cache: torch.Tensor | None = None
        self.reference: torch.Tensor | None = None
        self.decider.reset()
        self.step_seconds: dict[str, list[float]] = defaultdict(list)

    @property
    def decisions(self) -> list[Decision]:
        return self.decider.decisions

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        plan = self.plan
        if self.step >= plan.num_steps:
            raise RuntimeError(f"the plan has {plan.num_steps} steps and all have run; call reset() before the next "
                               f"run (or sample with as many steps as the schedule)")
        s = self.step
        if self.timing and self.sync:
            self.sync()
        start = time.perf_counter()
        x = inputs["x"]
        reference = self.reference
        if reference is None:  # step 0: nothing to compare with (a fixed step: its signal is not read)
            reference = torch.zeros(self.probe_shape(x.shape[0]), dtype=x.dtype, device=x.device)
        probed = self.programs["probe"]({**inputs, PROBE_REF: reference})
        carried = {k: v for k, v in probed.items() if k not in (PROBE, SIGNAL)}
        if plan.policy.is_fixed(s) or self.cache is None:
            self.decider.fixed(s)
            replayed = False
        else:
            replayed = self.decider.decide(s, probed[SIGNAL].detach().float().cpu())  # the one read of the step
        self.reference = probed[PROBE]
        named = {**inputs, **carried}
        if replayed:
            out = self.programs["replay"]({**named, CACHE_IN: self.cache})[OUT]
        else:
            outs = self.programs["compute"](named)
            self.cache = outs[CACHE_OUT]
            out = outs[OUT]
        if self.timing:
            if self.sync:
                self.sync()
            self.step_seconds["replay" if replayed else "compute"].append(time.perf_counter() - start)
        self.step += 1
        return out


# ---- program callables ------------------------------------------------------------------------------------
def module_program(module: torch.nn.Module) -> ProgramFn:
    """An eager program module (graphs.adaptive_programs) over named tensors."""

    @torch.no_grad()
    def run(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = module(*(named[n] for n in module.input_names))
        return dict(zip(module.output_names, outs))

    return run


def flat_program(flat, graph) -> ProgramFn:
    """A compiled program graph (FlatFn + its GraphSpec) over named tensors, inputs cast to the graph's dtypes and
    the output returned in float32."""
    from ditcache.compiler.runtime.adapters import cast_inputs

    def run(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outs = dict(zip(graph.output_names, flat(*cast_inputs(graph, named))))
        if "out" in outs:
            outs["out"] = outs["out"].float()
        return outs

    return run


def chunked_program(fn: ProgramFn, batch: int, rows_of: str) -> ProgramFn:
    """``fn`` (static model batch ``batch``) for any batch: chunks of ``batch`` rows, the last padded with copies of
    its last row; every output is per row, so the chunks' outputs concatenate (the signal too: the batch rule is
    applied on the host to all rows of the call)."""

    def run(named: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        rows = named[rows_of].shape[0]
        if rows == batch:
            return fn(named)
        pieces: dict[str, list[torch.Tensor]] = {}
        for start in range(0, rows, batch):
            index = torch.arange(start, start + batch).clamp_(max=rows - 1)  # (batch,)
            take = min(batch, rows - start)
            chunk = {k: v.index_select(0, index.to(v.device)) if v.ndim > 0 and v.shape[0] == rows else v
                     for k, v in named.items()}
            for k, v in fn(chunk).items():
                pieces.setdefault(k, []).append(v[:take])
        return {k: torch.cat(v) for k, v in pieces.items()}

    return run


def eager_adaptive_dispatcher(parts, plan: AdaptivePlan, sync=None) -> AdaptiveDispatcher:
    """An AdaptiveDispatcher over the eager programs of ``parts``."""
    from ditcache.graphs.adaptive_programs import program_modules
    from ditcache.graphs.segments import hidden_shape_at

    modules = program_modules(parts, plan)
    start = plan.replay_range.start
    return AdaptiveDispatcher(plan, {k: module_program(m) for k, m in modules.items()},
                              lambda batch: hidden_shape_at(parts, batch, start), sync)


def compiled_adaptive_dispatcher(plan: AdaptivePlan, flats, graphs, batch: int | None = None,
                                 sync=None) -> AdaptiveDispatcher:
    """An AdaptiveDispatcher over loaded program graphs (``adaptive.probe``, ``adaptive.compute``,
    ``adaptive.replay``); ``batch``: their static model batch (other sizes run in chunks)."""
    programs = {}
    for name in plan.programs:
        graph = graphs[f"adaptive.{name}"]
        fn = flat_program(flats[f"adaptive.{name}"], graph)
        if batch is not None:
            fn = chunked_program(fn, batch, "x" if name == "probe" else graph.input_names[0])
        programs[name] = fn
    reference = next(t for t in graphs["adaptive.probe"].inputs if t.name == PROBE_REF)
    return AdaptiveDispatcher(plan, programs, lambda rows: (rows, *reference.shape[1:]), sync)




def decisions_table(decisions: list[Decision]) -> str:
    """The record of a run, one line per step (``ditcache sample/run --show-decisions``)."""
    lines = [f"{'step':>4}  {'program':<8} {'signal':>9} {'accumulated':>11}  reason"]
    for d in decisions:
        signal = "-" if d.signal is None else f"{d.signal:.4g}"
        lines.append(f"{d.step:>4}  {d.program:<8} {signal:>9} {d.accumulated:>11.4g}  {d.reason}")
    replayed = sum(d.program == "replay" for d in decisions)
    lines.append(f"{replayed} of {len(decisions)} steps replayed")
    return "\n".join(lines)
