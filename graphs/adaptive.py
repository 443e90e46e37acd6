"""Adaptive schedules: the policy (``kind: adaptive``) and its plan, where the choice between two precompiled
continuations is left to the run (docs/adaptive.md).

Every step runs the PROBE program (head, blocks [0, start), the probe value and its per-row signal), then one of
two continuations: COMPUTE (blocks [start, Nb), tail; records the range's residual) or REPLAY (``h + Δ`` for the
range [start, end), then blocks [end, Nb) and the tail). Warm-up and final steps always compute; the others are
decided by the dispatcher (compiler.runtime.decider) from the signal the probe graph returns.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .macs import SegmentCosts
from .plan import CACHE_MODES, CacheRange, PlanError

SIGNALS = ("first-block", "modulated-input")
PROGRAMS = ("probe", "compute", "replay")
RANGE_NAME = "rest"
KEYS = {"kind", "steps", "signal", "threshold", "replay", "warmup", "final", "max_consecutive", "rescale", "cache"}
DEFAULTS = {"signal": "first-block", "replay": "rest", "warmup": 2, "final": 1, "max_consecutive": 3, "cache": "offset"}


@dataclass(frozen=True)
class AdaptivePolicy:
    """How an adaptive schedule decides, at each step that is not fixed, between computing and replaying.

    Args:
        steps: sampling steps.
        signal: ``first-block`` (the residual of blocks [0, start), FirstBlockCache) or ``modulated-input`` (block
            ``start``'s timestep-modulated input, TeaCache).
        threshold: the accumulated budget: a step replays while every row's accumulated (rescaled) signal since the
            last computed step stays below it; 0 never replays.
        replay: ``rest`` or a block range ``(start, end)`` that replays its recorded residual.
        warmup, final: first and last steps that always compute.
        max_consecutive: at most this many replayed steps in a row.
        rescale: polynomial coefficients, highest power first (numpy.polyval), mapping the probe's relative change
            to the output's (fitted by ``ditcache calibrate --adaptive``); empty: the identity.
        cache: ``offset`` (replay adds the recorded out - in) or ``output`` (replay returns the recorded output).
    """

    steps: int
    threshold: float
    signal: str = "first-block"
    replay: str | tuple[int, int] = "rest"
    warmup: int = 2
    final: int = 1
    max_consecutive: int = 3
    rescale: tuple[float, ...] = ()
    cache: str = "offset"

    def replay_range(self, num_blocks: int) -> tuple[int, int]:
        """[start, end) of the replayed blocks on a model of ``num_blocks`` blocks (``rest``: [1, Nb) for the
        first-block signal, which computes block 0 as its probe; [0, Nb) for the modulated input, as TeaCache)."""
        if self.replay == "rest":
            return (1 if self.signal == "first-block" else 0), num_blocks
        return tuple(self.replay)  # type: ignore[return-value]

    def is_fixed(self, step: int) -> bool:
        """True for warm-up and final steps (always computed, no signal read)."""
        return step < self.warmup or step >= self.steps - self.final

    def rescaled(self, value: float) -> float:
        """The rescale polynomial at ``value``, clipped at 0 (a budget only grows)."""
        if not self.rescale:
            return value
        out = 0.0
        for c in self.rescale:  # Horner, highest power first, as numpy.polyval
            out = out * value + c
        return max(out, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Normalized keys of the schedule (what a manifest stores)."""
        return {"signal": self.signal, "threshold": self.threshold,
                "replay": self.replay if self.replay == "rest" else list(self.replay), "warmup": self.warmup,
                "final": self.final, "max_consecutive": self.max_consecutive, "rescale": list(self.rescale),
                "cache": self.cache}

    @classmethod
    def from_params(cls, steps: int, params: Mapping[str, Any]) -> "AdaptivePolicy":
        replay = params.get("replay", "rest")
        return cls(steps=steps, threshold=float(params["threshold"]), signal=params.get("signal", "first-block"),
                   replay=replay if replay == "rest" else (int(replay[0]), int(replay[1])),
                   warmup=int(params.get("warmup", 2)), final=int(params.get("final", 1)),
                   max_consecutive=int(params.get("max_consecutive", 3)),
                   rescale=tuple(float(c) for c in params.get("rescale", ())), cache=params.get("cache", "offset"))


def adaptive_params(data: Mapping[str, Any], steps: int, source: str) -> dict[str, Any]:
    """Validate the keys of a ``kind: adaptive`` mapping (graphs.schedule calls this); the normalized params."""
    from .schedule import ScheduleError

    def fail(message: str):
        raise ScheduleError(f"{source}: {message}")

    signal = data.get("signal", DEFAULTS["signal"])
    if signal not in SIGNALS:
        fail(f"'signal' must be one of {', '.join(SIGNALS)} (got {signal!r})")
    threshold = data.get("threshold")
    if threshold is None:
        fail("adaptive needs 'threshold' (the accumulated relative-L1 budget, e.g. 0.1; 0 never replays), or make "
             "one with `ditcache auto-schedule --kind adaptive --target-speedup X`")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        fail(f"'threshold' must be a number >= 0 (got {threshold!r})")
    ints = {}
    for key, low in (("warmup", 1), ("final", 0), ("max_consecutive", 1)):
        value = data.get(key, DEFAULTS[key])
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            fail(f"{key!r} must be an integer >= {low} (got {value!r})"
                 + ("; the first step has nothing to replay" if key == "warmup" else ""))
        ints[key] = value
    if ints["warmup"] + ints["final"] > steps:
        fail(f"warmup ({ints['warmup']}) + final ({ints['final']}) exceed the {steps} steps")
    replay = data.get("replay", DEFAULTS["replay"])
    if replay != "rest":
        if not (isinstance(replay, (list, tuple)) and len(replay) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) for b in replay) and 0 <= replay[0] < replay[1]):
            fail(f"'replay' must be 'rest' or a block range [start, end) with 0 <= start < end (got {replay!r})")
        if signal == "first-block" and replay[0] < 1:
            fail("the first-block signal computes blocks [0, start) as its probe: 'replay' must start at block >= 1")
        replay = [int(replay[0]), int(replay[1])]
    rescale = data.get("rescale", [])
    if not isinstance(rescale, (list, tuple)) or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in rescale):
        fail(f"'rescale' must be a list of polynomial coefficients, highest power first (got {rescale!r})")
    cache = data.get("cache", DEFAULTS["cache"])
    if cache not in CACHE_MODES:
        fail(f"'cache' must be 'offset' or 'output' (got {cache!r})")
    return {"signal": signal, "threshold": float(threshold), "replay": replay, **ints,
            "rescale": [float(c) for c in rescale], "cache": cache}


@dataclass(frozen=True)
class AdaptivePlan:
    """The plan of an adaptive schedule: what is fixed at export (the three programs, the probe and replayed
    ranges, the fixed steps) and the policy the dispatcher applies at run time.

    Args:
        num_blocks: blocks of the denoiser.
        policy: the decision rule.
        replay_range: the range whose residual the REPLAY program adds (named ``rest``).
        schedule: the normalized schedule (what a manifest stores).
    """

    num_blocks: int
    policy: AdaptivePolicy
    replay_range: CacheRange
    schedule: dict[str, Any] = field(default_factory=dict, compare=False)

    kind = "adaptive"
    corrected = False
    corrections = None
    calibration = None

    @classmethod
    def build(cls, policy: AdaptivePolicy, num_blocks: int, schedule: Mapping[str, Any] | None = None,
              source: str = "<schedule>") -> "AdaptivePlan":
        start, end = policy.replay_range(num_blocks)
        if end > num_blocks:
            raise PlanError(f"{source}: replay range [{start}, {end}) is outside the model's {num_blocks} blocks")
        if policy.signal == "first-block" and start < 1:
            raise PlanError(f"{source}: the first-block signal needs at least one probe block before the replay")
        return cls(num_blocks, policy, CacheRange(RANGE_NAME, start, end), dict(schedule or {}))

    @property
    def num_steps(self) -> int:
        return self.policy.steps

    @property
    def cache(self) -> str:
        return self.policy.cache

    @property
    def probe_end(self) -> int:
        """Blocks [0, probe_end) run in the probe graph."""
        return self.replay_range.start

    @property
    def programs(self) -> tuple[str, ...]:
        return PROGRAMS

    @property
    def fixed_steps(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.num_steps) if self.policy.is_fixed(s))

    @property
    def decided_steps(self) -> tuple[int, ...]:
        return tuple(s for s in range(self.num_steps) if not self.policy.is_fixed(s))

    def max_replays(self) -> int:
        """The most steps a run can replay: the decided steps, less one compute after every ``max_consecutive``."""
        decided = len(self.decided_steps)
        return decided - decided // (self.policy.max_consecutive + 1)

    # ---- cost ---------------------------------------------------------------------------------------------
    def replay_saving(self, costs: SegmentCosts) -> int:
        return costs.blocks_range(self.replay_range.start, self.replay_range.end)

    def macs_bounds(self, costs: SegmentCosts) -> tuple[int, int]:
        """(min, max) MACs of a run: every decided step replaying as the cap allows, and none."""
        full = costs.full * self.num_steps
        return full - self.max_replays() * self.replay_saving(costs), full

    def macs_of(self, replayed: int, costs: SegmentCosts) -> int:
        """MACs of a run that replayed ``replayed`` steps."""
        return costs.full * self.num_steps - replayed * self.replay_saving(costs)

    # ---- identity ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_blocks": self.num_blocks, "cache": self.cache, "corrected": False,
                "ranges": [{"name": RANGE_NAME, "start": self.replay_range.start, "end": self.replay_range.end}],
                "programs": list(PROGRAMS), "fixed_steps": list(self.fixed_steps),
                "decided_steps": list(self.decided_steps), "policy": self.policy.to_dict(),
                "steps": self.num_steps, "schedule": self.schedule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdaptivePlan":
        policy = AdaptivePolicy.from_params(int(data["steps"]), data["policy"])
        r = data["ranges"][0]
        return cls(int(data["num_blocks"]), policy, CacheRange(r["name"], int(r["start"]), int(r["end"])),
                   dict(data["schedule"]))

    def hash(self) -> str:
        canonical = json.loads(json.dumps(self.to_dict()))
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def table(self, costs: SegmentCosts | None = None) -> str:
        """What is fixed and what is decided at run time, with the MACs bounds where costs are given."""
        p, r = self.policy, self.replay_range
        lines = [f"adaptive: signal {p.signal}, threshold {p.threshold:g} (accumulated, per row; the batch replays "
                 f"when every row is under it), max {p.max_consecutive} replays in a row"
                 + (f", rescale {list(p.rescale)}" if p.rescale else ""),
                 f"programs (fixed at export): probe = head + blocks [0, {r.start}) + signal; "
                 f"compute = blocks [{r.start}, {self.num_blocks}) + tail, records Δ of [{r.start}, {r.end}); "
                 f"replay = h + Δ for [{r.start}, {r.end})" + (f", blocks [{r.end}, {self.num_blocks})"
                                                               if r.end < self.num_blocks else "") + " + tail",
                 f"{'step':>4}  {'program':<24}"]
        for s in range(self.num_steps):
            what = "probe + compute (fixed)" if p.is_fixed(s) else "probe + decided at run time"
            lines.append(f"{s:>4}  {what}")
        lines.append(f"fixed steps: {list(self.fixed_steps)}; decided: {len(self.decided_steps)}, at most "
                     f"{self.max_replays()} replayed")
        if costs:
            low, high = self.macs_bounds(costs)
            lines.append(f"MACs between {low / 1e9:.4g} and {high / 1e9:.4g} G (full {high / 1e9:.4g} G) -> "
                         f"theoretical speedup 1.00x to {high / low:.2f}x, decided at run time")
        return "\n".join(lines)


def check_family(spec: Any, policy: AdaptivePolicy, source: str) -> None:
    """Refuse families where the probe makes no sense: U-Nets (the attention layers are not one chain of one hidden
    state, and a replayed range would span the skip connections)."""
    from .schedule import ScheduleError

    if hasattr(spec.family_record.parts, "link"):
        raise ScheduleError(f"{source}: kind adaptive needs a chain of blocks on one hidden state (DiT, PixArt); "
                            f"{spec.name} is a U-Net, whose skip connections a replayed range would cut: use "
                            f"block-cache schedules there")


def adaptive_plan(schedule: Any, spec: Any) -> AdaptivePlan:
    """The AdaptivePlan of a validated ``kind: adaptive`` Schedule on ``spec`` (graphs.planning.plan_for's branch)."""
    from .schedule import ScheduleError

    policy = AdaptivePolicy.from_params(schedule.steps, schedule.params)
    check_family(spec, policy, schedule.source)
    try:
        return AdaptivePlan.build(policy, spec.num_blocks, schedule.to_dict(), schedule.source)
    except PlanError as exc:
        raise ScheduleError(str(exc)) from None


def plan_from_dict(data: Mapping[str, Any]):
    """A Plan or an AdaptivePlan from its ``to_dict`` form (what a manifest stores)."""
    if data.get("kind") == "adaptive":
        return AdaptivePlan.from_dict(data)
    from .plan import Plan

    return Plan.from_dict(data)


def is_adaptive(plan: Any) -> bool:
    return isinstance(plan, AdaptivePlan)


def replays_possible(policy: AdaptivePolicy, decisions: Sequence[bool]) -> bool:
    """True when the replay decisions respect the cap and the fixed steps (for checks of recorded runs)."""
    run = 0
    for s, replayed in enumerate(decisions):
        if replayed and policy.is_fixed(s):
            return False
        run = run + 1 if replayed else 0
        if run > policy.max_consecutive:
            return False
    return True
