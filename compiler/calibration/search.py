"""Error-driven static schedules: the measured objective of graphs.auto_schedule's search.

One full sampling run on the calibration batch records, at every step, the denoiser's inputs, its output and every
cache unit's recording (offset ``out - in`` or output). The error of a set of moves is then the sum over steps of the
*teacher-forced* error of that step — the step re-run from the full run's state with the step's replays, each unit's
cache taken from the last step that computes it — weighted by a measured gain that turns a denoiser-output error at
step s into final-sample error (one perturbed rollout per step). A step's error depends only on which units it
replays and where their caches come from, so it is memoised: a search iteration re-runs only the steps a move
changes. docs/error-driven.md gives the reasons; :func:`final_error` measures what a schedule really does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from ditcache.graphs.auto_schedule import (MacBudget, Move, SearchResult, SearchSpace, block_units, check_reachable,
                                          search_schedule)
from ditcache.graphs.plan import Plan, Variant
from ditcache.graphs.registry import ModelSpec
from ditcache.graphs.segments import DenoiserParts, block_name
from ditcache.graphs.variants import build_segments, replay, run_variant

from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.dispatcher import VariantFn
from ditcache.compiler.runtime.interpreter import segment_variant_fn
from ditcache.compiler.runtime.runner import sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest, noise_prediction, sample

if TYPE_CHECKING:
    from ditcache.graphs.configs import BlockCacheConfig

GAIN_PERTURBATION = 1e-2  # relative RMS of the output perturbation that measures a step's gain (linear regime)
GAIN_IMAGES = 2  # images the gains are measured on


def calibration_batch(seeds: Sequence[int], classes: Sequence[int] | None, num_classes: int, steps: int,
                      guidance: float, scheduler: str) -> SampleRequest:
    """The search's calibration images as one request: one image per (seed, class) when ``classes`` are given,
    else image i has seed ``seeds[i]`` and class ``i % min(10, num_classes)``; each image's noise is its own seed's."""
    if not seeds:
        raise ValueError("the search needs calibration seeds, e.g. --seeds 0 1 2 3 4 5 6 7")
    if classes:
        pairs = [(s, c) for s in seeds for c in classes]
    else:
        pairs = [(s, i % min(10, num_classes)) for i, s in enumerate(seeds)]
    return SampleRequest(tuple(c for _, c in pairs), steps, guidance, 0, scheduler,
                         sample_seeds=tuple(s for s, _ in pairs))


@dataclass
class Reference:
    """The full run on the calibration batch, step by step.

    Args:
        inputs: per step, the denoiser's inputs (model batch: doubled under guidance).
        outputs: per step, the denoiser's output (B2, C, H, W).
        records: per step, each unit's recording (offset or output), keyed by unit name.
        segment_inputs: per step, what each segment read (chains of blocks only; empty otherwise).
        final: the final latents (B, C, H, W).
    """

    inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    records: list[dict[str, torch.Tensor]] = field(default_factory=list)
    segment_inputs: list[dict[str, tuple[torch.Tensor, ...]]] = field(default_factory=list)
    final: torch.Tensor | None = None


def _layout(space: SearchSpace) -> Plan:
    """A one-step plan holding every unit as a range: what the segments are cut at and the variants run over."""
    return Plan(space.num_blocks, tuple(sorted(space.units, key=lambda r: r.start)), (Variant(),), space.cache)


class StepErrorModel:
    """The search's objective on one model and calibration batch (see the module docstring).

    Args:
        parts: the model's decomposition (eager).
        spec: its registry record.
        space: the units and steps searched.
        request: the calibration batch (its steps must be the space's).
        gains: per step, final-sample MSE per unit of denoiser-output MSE; None: measure them.
        progress: show progress bars.
    """

    def __init__(self, parts: DenoiserParts, spec: ModelSpec, space: SearchSpace, request: SampleRequest,
                 gains: Sequence[float] | None = None, progress: bool = False):
        if request.steps != space.steps:
            raise ValueError(f"the calibration request has {request.steps} steps, the search space {space.steps}")
        self.parts, self.spec, self.space, self.request = parts, spec, space, request
        self.layout = _layout(space)
        self.segments = build_segments(parts, self.layout)
        self._fns: dict[tuple[str, ...], VariantFn] = {}
        self._memo: dict[tuple, float] = {}
        # a chain of blocks (DiT, PixArt): block segments read and write only the hidden state besides what the
        # head made, no links run between them (U-Nets), the units are whole segments; step runs may then start
        # at the first replayed unit
        self.chained = all(not name.startswith("link.") for name in self.segments) and all(
            seg.outputs == (parts.hidden_name,) for seg in self.segments.values() if seg.start is not None)
        self.step_runs = 0
        self.reference = self._record(progress)
        self.gains = list(gains) if gains is not None else self._measure_gains(progress)
        if len(self.gains) != space.steps:
            raise ValueError(f"{len(self.gains)} gains for {space.steps} steps")

    # ---- running one step -----------------------------------------------------------------------------------------
    def _fn(self, replay: tuple[str, ...], record: tuple[str, ...] = ()) -> VariantFn:
        key = replay + ("|",) + record
        if key not in self._fns:
            variant = Variant(replay, record)
            self._fns[key] = torch.no_grad()(segment_variant_fn(self.layout, variant, self.segments,
                                                                self.parts.hidden_name))
        return self._fns[key]

    def _record(self, progress: bool) -> Reference:
        reference = Reference()
        names = tuple(r.name for r in self.layout.ranges)
        variant = Variant((), names)
        inputs_of = {k: seg.inputs for k, seg in self.segments.items()}
        outputs_of = {k: seg.outputs for k, seg in self.segments.items()}

        def denoiser(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            seen: dict[str, tuple[torch.Tensor, ...]] = {}

            def run_segment(name: str, xs: tuple[torch.Tensor, ...]):
                seen[name] = xs  # what each segment read: a step run can start at its first replayed unit
                return self.segments[name](*xs)

            with torch.no_grad():
                out, recorded = run_variant(self.layout, variant, run_segment, inputs_of, inputs, {}, None,
                                            self.parts.hidden_name, None, outputs_of)
            reference.inputs.append(dict(inputs))
            reference.outputs.append(out)
            reference.records.append(recorded)
            reference.segment_inputs.append(seen if self.chained else {})
            return out

        reference.final = sample(denoiser, self.spec, self.request, progress=progress)
        return reference

    def _step_output(self, step: int, caches: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The denoiser output of ``step`` replaying ``caches`` (unit name -> cache), teacher-forced. On a chain of
        blocks the run starts at the first replayed unit, from the hidden state the full run had there (what the
        blocks before it compute is the full run's, bit for bit); otherwise it runs from the head."""
        if not self.chained:
            return self._fn(tuple(caches))(self.reference.inputs[step], caches, {})[0]
        hidden, mode = self.parts.hidden_name, self.space.cache
        read = self.reference.segment_inputs[step]
        starts = {self.layout.range(n).start: n for n in caches}
        first = min(starts)
        h = None
        for a, b in self.layout.block_segments:
            if a < first:
                continue
            segment = self.segments[block_name(a, b)]
            xs = read[segment.name]
            if h is None:
                h = xs[segment.inputs.index(hidden)]  # (B, T, D)
            if a in starts:
                h = replay(h, caches[starts[a]], mode)
            else:
                h = segment(*(h if k == hidden else x for k, x in zip(segment.inputs, xs)))
        tail = self.segments["tail"]
        return tail(*(h if k == hidden else x for k, x in zip(tail.inputs, read["tail"])))

    def _measure_gains(self, progress: bool) -> list[float]:
        """Per step s: final-latent MSE / denoiser-output MSE of a small random perturbation of step s's output,
        the later steps recomputed (the earlier ones are the full run's). Measured on the first ``GAIN_IMAGES``
        images: a gain is one number per step, and the rollouts are most of the set-up's cost."""
        from dataclasses import replace

        full = self._fn(())
        request = self.request
        if request.num_images > GAIN_IMAGES:
            request = replace(request, class_labels=request.class_labels[:GAIN_IMAGES],
                              sample_seeds=request.sample_seeds[:GAIN_IMAGES])
        outputs: list[torch.Tensor] = []

        def record(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
            outputs.append(full(inputs, {}, {})[0])
            return outputs[-1]

        reference = sample(record, self.spec, request)
        gains = []
        steps = range(self.space.steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="step gains", unit="step")
        for s in steps:
            generator = torch.Generator().manual_seed(1000 + s)
            noise = torch.randn(outputs[s].shape, generator=generator)
            noise = noise * GAIN_PERTURBATION * noise_prediction(outputs[s], self.spec).float().pow(2).mean().sqrt()
            counter = {"step": 0}

            def denoiser(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
                k = counter["step"]
                counter["step"] += 1
                if k < s:
                    return outputs[k]
                if k == s:
                    return outputs[k] + noise.to(outputs[k].dtype)
                return full(inputs, {}, {})[0]

            final = sample(denoiser, self.spec, request)
            injected = noise_prediction(noise, self.spec).float().pow(2).mean().item()
            gains.append(_mse(final, reference) / injected if injected > 0 else 0.0)
        return gains

    def step_error(self, step: int, replays: tuple[tuple[str, int], ...]) -> float:
        """Denoiser-output MSE at ``step`` (teacher-forced) replaying each (unit, source step) of ``replays``."""
        if not replays:
            return 0.0
        key = (step, replays)
        if key not in self._memo:
            caches = {n: self.reference.records[p][n] for n, p in replays}
            with torch.no_grad():
                out = self._step_output(step, caches)
            self.step_runs += 1
            self._memo[key] = _mse(noise_prediction(out, self.spec), noise_prediction(self.reference.outputs[step], self.spec))
        return self._memo[key]

    # ---- the objective ----------------------------------------------------------------------------------------------
    def sources(self, moves: frozenset[Move]) -> list[tuple[tuple[str, int], ...]]:
        """Per step, the (unit, step its cache comes from) pairs it replays, in unit order."""
        units = self.space.units
        last = [0] * len(units)
        out: list[tuple[tuple[str, int], ...]] = [()]
        for s in range(1, self.space.steps):
            row = []
            for u in range(len(units)):
                if (s, u) in moves:
                    row.append((units[u].name, last[u]))
                else:
                    last[u] = s
            out.append(tuple(row))
        return out

    def step_errors(self, moves: frozenset[Move]) -> list[float]:
        """Per step, the gain-weighted teacher-forced error of these moves."""
        return [self.gains[s] * self.step_error(s, row) for s, row in enumerate(self.sources(moves))]

    def __call__(self, moves: frozenset[Move]) -> float:
        """Estimated final-latent MSE of the moves: the sum of :meth:`step_errors`."""
        return float(sum(self.step_errors(moves)))


@dataclass(frozen=True)
class FinalError:
    """How far a plan's final samples are from the full run's on the same noise.

    Args:
        mse: mean squared error of the final latents.
        relative_l2: ‖x − x_full‖ / ‖x_full‖ over the batch.
        psnr_db: 10 log10(range² / mse), range the full latents' max − min (inf when identical).
    """

    mse: float
    relative_l2: float
    psnr_db: float


def compare_final(latents: torch.Tensor, reference: torch.Tensor) -> FinalError:
    """FinalError of ``latents`` against ``reference`` (both (B, C, H, W))."""
    mse = _mse(latents, reference)
    norm = reference.float().norm().item()
    peak = (reference.max() - reference.min()).item()
    psnr = math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)
    return FinalError(mse, (latents.float() - reference.float()).norm().item() / max(norm, 1e-12), psnr)


def final_error(parts: DenoiserParts, spec: ModelSpec, plan: Plan, request: SampleRequest,
                reference: torch.Tensor) -> FinalError:
    """Sample ``request`` with ``plan`` through the runtime's dispatcher (an independent path from the search's
    step runs) and compare with the full run's final latents."""
    dispatcher = build_dispatcher(plan, parts=parts)
    return compare_final(sample_with_plan(dispatcher, spec, request), reference)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).pow(2).mean().item()




@dataclass(frozen=True)
class ErrorDrivenSchedule:
    """A searched block-cache schedule and what was measured for it.

    Args:
        config: the schedule (an explicit ``recompute`` table): write it with ``config.to_yaml``.
        result: the search's moves, objective and path.
        final: the plan's final-sample error on the calibration batch, sampled through the dispatcher.
        budget: the MAC budget searched for.
        space: the units and steps searched.
        objective: the measured objective (its reference run and memo), to score other schedules alike.
    """

    config: "BlockCacheConfig"
    result: SearchResult
    final: FinalError
    budget: MacBudget
    space: SearchSpace
    objective: StepErrorModel

    def metadata(self, request: SampleRequest, beam_width: int, extra: Mapping[str, object] | None = None) -> dict:
        """What a schedule's side file records: objective, budget, calibration batch, measured errors."""
        return {
            "format": METADATA_FORMAT,
            "objective": OBJECTIVE,
            "budget": {"label": self.budget.label, "target_speedup": self.budget.target_speedup},
            "theoretical_speedup": self.result.speedup,
            "steps": self.space.steps,
            "cache": self.space.cache,
            "units": [{"name": r.name, "start": r.start, "end": r.end} for r in self.space.units],
            "beam_width": beam_width,
            "calibration": {"sampler": request.scheduler, "guidance": request.guidance_scale,
                            "class_labels": list(request.class_labels), "seeds": list(request.sample_seeds or ())},
            "estimated_final_mse": self.result.error,
            "measured_final": {"mse": self.final.mse, "relative_l2": self.final.relative_l2,
                               "psnr_db": self.final.psnr_db},
            "moves": len(self.result.moves),
            "evaluations": self.result.evaluations,
            **dict(extra or {}),
        }


METADATA_FORMAT = "ditcache-search/1"
OBJECTIVE = ("error: estimated final-sample MSE = sum over steps of the teacher-forced denoiser-output MSE of the "
             "step's replays x the step's measured gain")


def error_driven_schedule(parts: DenoiserParts, spec: ModelSpec, request: SampleRequest, budget: MacBudget,
                          cache: str = "offset", unit_blocks: int = 1, beam_width: int = 1,
                          progress: bool = False) -> ErrorDrivenSchedule:
    """Search the block-cache schedule of ``request.steps`` steps that meets ``budget`` with the least estimated
    final-sample error on the calibration batch ``request``, and measure its real final error there."""
    from ditcache.graphs import costs_for
    from ditcache.graphs.configs import BlockCacheConfig

    space = SearchSpace(spec.num_blocks, request.steps, block_units(spec.num_blocks, unit_blocks), cache)
    costs = costs_for(spec)
    check_reachable(space, costs, budget)  # before any sampling
    model = StepErrorModel(parts, spec, space, request, progress=progress)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="search", unit="move")
    result = search_schedule(space, costs, budget, model, beam_width,
                             progress=(lambda n, e: bar.update(1)) if bar is not None else None)
    if bar is not None:
        bar.close()
    config = BlockCacheConfig(steps=space.steps, recompute=space.recompute(result.moves), cache=cache)
    from ditcache.graphs.planning import plan_for

    plan = plan_for(config.to_schedule(), spec)  # the checked path: what the written file will plan to
    return ErrorDrivenSchedule(config, result, final_error(parts, spec, plan, request, model.reference.final),
                               budget, space, model)

