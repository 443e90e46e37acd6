"""The runtime dispatcher: runs each step's variant and owns the caches. The only stateful piece."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Mapping

import torch

from ditcache.graphs.corrections import step_corrections
from ditcache.graphs.plan import Plan

# (model inputs, caches to replay, corrections) -> (output, newly recorded caches)
VariantFn = Callable[
    [Mapping[str, torch.Tensor], Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]


class Dispatcher:
    """Calls the plan's variant for the current step, keeping recorded caches between steps.

    Args:
        plan: the per-step program.
        variants: a callable per variant name (any backend), see :data:`VariantFn`.
        corrections: scale/shift tensors (``scale.<range>``, shape (steps, D)) for corrected plans.
        sync: called before reading a clock (``torch.cuda.synchronize`` on CUDA) when timing.
    """

    def __init__(
        self,
        plan: Plan,
        variants: Mapping[str, VariantFn],
        corrections: Mapping[str, torch.Tensor] | None = None,
        sync: Callable[[], None] | None = None,
    ):
        missing = [v.name for v in plan.variants if v.name not in variants]
        if missing:
            raise ValueError(f"no callable for variant(s) {missing}; the backend built {sorted(variants)}")
        if plan.corrected and corrections is None:
            raise ValueError("the plan replays with scale/shift but no corrections were given")
        self.plan = plan
        self.variants = dict(variants)
        self.corrections = corrections
        self.sync = sync
        self.timing = False
        self._live = [plan.live_after(s) for s in range(plan.num_steps)]
        self.reset()

    def fresh(self) -> "Dispatcher":
        """Another dispatcher over the same (stateless) variants and corrections, with caches of its own."""
        return Dispatcher(self.plan, self.variants, self.corrections, self.sync)

    def reset(self) -> None:
        """Forget caches and start again at step 0 (call before each sampling run)."""
        self.step = 0
        self.caches: dict[str, torch.Tensor] = {}
        self.step_seconds: dict[str, list[float]] = defaultdict(list)

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.step >= self.plan.num_steps:
            raise RuntimeError(
                f"the plan has {self.plan.num_steps} steps and all have run; call reset() before the next run "
                f"(or sample with as many steps as the schedule)"
            )
        variant = self.plan.steps[self.step]
        caches = {n: self.caches[n] for n in variant.replay}
        corrections = step_corrections(self.corrections, variant, self.step) if self.plan.corrected else {}
        if self.timing and self.sync:
            self.sync()
        start = time.perf_counter()
        out, recorded = self.variants[variant.name](inputs, caches, corrections)
        if self.timing:
            if self.sync:
                self.sync()
            self.step_seconds[variant.name].append(time.perf_counter() - start)
        self.caches.update(recorded)
        for n in [n for n in self.caches if n not in self._live[self.step]]:
            del self.caches[n]  # no later step replays this recording
        self.step += 1
        return out
