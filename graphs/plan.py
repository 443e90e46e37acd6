"""Plans: the static program of a sampling run, one variant per step, derived once from a schedule."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .curves import Calibration
from .macs import SegmentCosts

CACHE_MODES = ("offset", "output")


class PlanError(ValueError):
    """A plan that cannot be executed (replaying what was never recorded, overlapping replays)."""


@dataclass(frozen=True)
class CacheRange:
    """A contiguous block range [start, end) whose result can be recorded and replayed."""

    name: str
    start: int
    end: int

    def overlaps(self, other: "CacheRange") -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True)
class Variant:
    """One step's program: which cache ranges are replayed, and which are recorded for later steps.

    Ranges in neither set are computed. ``replay`` and ``record`` hold range names in plan order.
    """

    replay: tuple[str, ...] = ()
    record: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Stable, file-name-safe identifier (``full``, ``back-skipped``, ``full+rec-front``, ...)."""
        if not self.replay:
            base = "full"
        elif self.replay in (("front",), ("back",)):
            base = f"{self.replay[0]}-skipped"
        else:
            base = "blocks-replayed-" + _compact(self.replay)
        return base + ("+rec-" + _compact(self.record) if self.record else "")


def _compact(names: Sequence[str]) -> str:
    """``b1 b2 b3 b7`` -> ``1-3_7``; other names joined with ``_``."""
    if not all(n.startswith("b") and n[1:].isdigit() for n in names):
        return "_".join(names)
    indices = sorted(int(n[1:]) for n in names)
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return "_".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class Plan:
    """Per-step variants of a sampling run and the layout they share.

    Args:
        num_blocks: blocks of the denoiser.
        ranges: cache ranges used by any step, in block order.
        steps: the variant of each step, in sampling order.
        cache: ``offset`` (replay adds the recorded out - in, Δ-Cache) or ``output`` (replay returns the
            recorded output, plain feature caching).
        corrected: replays take per-channel scale/shift inputs (block caching's correction).
        schedule: the normalized schedule this plan came from (what a manifest stores; no paths).
        corrections: the scale/shift file of a corrected plan (an engine directory's copy once loaded; None where
            the tensors come from elsewhere, e.g. a fit that is running).
        calibration: what the schedule's change curves were measured on (None without curves).
    """

    num_blocks: int
    ranges: tuple[CacheRange, ...]
    steps: tuple[Variant, ...]
    cache: str = "offset"
    corrected: bool = False
    schedule: dict[str, Any] = field(default_factory=dict, compare=False)
    corrections: Path | None = field(default=None, compare=False)
    calibration: Calibration | None = field(default=None, compare=False)

    @classmethod
    def from_replays(
        cls,
        num_blocks: int,
        ranges: Iterable[CacheRange],
        replays: Sequence[Iterable[str]],
        cache: str = "offset",
        corrected: bool = False,
        schedule: dict[str, Any] | None = None,
        corrections: Path | None = None,
        calibration: Calibration | None = None,
    ) -> "Plan":
        """Build a plan from the ranges each step replays; records are inferred (only where later used)."""
        if cache not in CACHE_MODES:
            raise PlanError(f"cache mode {cache!r} is not one of {CACHE_MODES}")
        used = {name for step in replays for name in step}
        ordered = tuple(sorted((r for r in ranges if r.name in used), key=lambda r: (r.start, r.end)))
        by_name = {r.name: r for r in ordered}
        for r in ordered:
            if not 0 <= r.start < r.end <= num_blocks:
                raise PlanError(f"cache range {r.name} [{r.start}, {r.end}) is outside the {num_blocks} blocks")
        replay_sets = [set(step) for step in replays]
        unknown = used - set(by_name)
        if unknown:
            raise PlanError(f"steps replay unknown cache ranges {sorted(unknown)}")
        for s, names in enumerate(replay_sets):
            rs = [by_name[n] for n in names]
            for i, a in enumerate(rs):
                for b in rs[i + 1:]:
                    if a.overlaps(b):
                        raise PlanError(f"step {s} replays overlapping ranges {a.name} and {b.name}")

        def computed(r: CacheRange, s: int) -> bool:
            return not any(by_name[n].overlaps(r) for n in replay_sets[s])

        record_sets: list[set[str]] = [set() for _ in replay_sets]
        for s, names in enumerate(replay_sets):
            for n in names:
                source = next((p for p in range(s - 1, -1, -1) if computed(by_name[n], p)), None)
                if source is None:
                    raise PlanError(f"step {s} replays {n} before any step computed it; compute it at step 0")
                record_sets[source].add(n)
        order = {r.name: i for i, r in enumerate(ordered)}
        steps = tuple(
            Variant(tuple(sorted(rep, key=order.get)), tuple(sorted(rec, key=order.get)))
            for rep, rec in zip(replay_sets, record_sets)
        )
        return cls(num_blocks, ordered, steps, cache, corrected, dict(schedule or {}), corrections, calibration)

    # ---- layout -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def range(self, name: str) -> CacheRange:
        return next(r for r in self.ranges if r.name == name)

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Block indices where segments start or end: 0, Nb and every cache range's ends."""
        points = {0, self.num_blocks}
        for r in self.ranges:
            points.update((r.start, r.end))
        return tuple(sorted(points))

    @property
    def block_segments(self) -> tuple[tuple[int, int], ...]:
        b = self.boundaries
        return tuple(zip(b[:-1], b[1:]))

    @property
    def variants(self) -> tuple[Variant, ...]:
        """Distinct variants in order of first use."""
        return tuple(dict.fromkeys(self.steps))

    def steps_of(self, variant: Variant) -> tuple[int, ...]:
        return tuple(s for s, v in enumerate(self.steps) if v == variant)

    def blocks_computed(self, step: int) -> int:
        replayed = sum(self.range(n).end - self.range(n).start for n in self.steps[step].replay)
        return self.num_blocks - replayed

    def last_use(self) -> dict[str, int]:
        """Last step at which each range's cache is replayed."""
        last: dict[str, int] = {}
        for s, v in enumerate(self.steps):
            for n in v.replay:
                last[n] = s
        return last

    def live_after(self, step: int) -> frozenset[str]:
        """Caches that must be kept after ``step``: those a later step replays before re-recording them."""
        live = set()
        for r in self.ranges:
            for v in self.steps[step + 1:]:
                if r.name in v.replay:
                    live.add(r.name)
                    break
                if r.name in v.record:
                    break
        return frozenset(live)

    # ---- cost ---------------------------------------------------------------------------------
    def step_macs(self, costs: SegmentCosts) -> list[int]:
        """MACs of each step (replays count as free)."""
        out = []
        for v in self.steps:
            skipped = sum(costs.blocks_range(self.range(n).start, self.range(n).end) for n in v.replay)
            out.append(costs.full - skipped)
        return out

    def total_macs(self, costs: SegmentCosts) -> int:
        return sum(self.step_macs(costs))

    def theoretical_speedup(self, costs: SegmentCosts) -> float:
        return costs.full * self.num_steps / self.total_macs(costs)

    # ---- identity -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "num_blocks": self.num_blocks,
            "cache": self.cache,
            "corrected": self.corrected,
            "ranges": [{"name": r.name, "start": r.start, "end": r.end} for r in self.ranges],
            "steps": [v.name for v in self.steps],
            "variants": {v.name: {"replay": list(v.replay), "record": list(v.record)} for v in self.variants},
            "schedule": self.schedule,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        """Inverse of :meth:`to_dict` (what a manifest stores; ``corrections`` stays None: the engine loader names
        the directory's copy)."""
        variants = {name: Variant(tuple(v["replay"]), tuple(v["record"])) for name, v in data["variants"].items()}
        normalized = dict(data["schedule"])
        calibrated = normalized.get("calibration")
        return cls(
            int(data["num_blocks"]),
            tuple(CacheRange(r["name"], int(r["start"]), int(r["end"])) for r in data["ranges"]),
            tuple(variants[name] for name in data["steps"]),
            data["cache"],
            bool(data["corrected"]),
            normalized,
            calibration=Calibration.from_dict(calibrated) if calibrated else None,
        )

    def hash(self) -> str:
        """sha256 of the canonical plan (schedule included), as stored: the JSON round trip first, so that a
        recompute table's int block keys hash as the string keys a manifest gives back (``{2: .., 10: ..}``
        sorts numerically, ``{"10": .., "2": ..}`` lexicographically)."""
        canonical = json.loads(json.dumps(self.to_dict()))
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def table(self, costs: SegmentCosts | None = None) -> str:
        """Readable per-step table, with MACs where costs are given."""
        macs = self.step_macs(costs) if costs else None
        lines = [f"{'step':>4}  {'variant':<34} {'blocks run':>10}" + ("  GMACs  rel" if macs else "")]
        for s, v in enumerate(self.steps):
            row = f"{s:>4}  {v.name:<34} {self.blocks_computed(s):>5}/{self.num_blocks:<4}"
            if macs:
                row += f"  {macs[s] / 1e9:6.2f}  {macs[s] / costs.full:4.2f}"
            lines.append(row)
        lines.append(f"variants: {len(self.variants)} ({', '.join(v.name for v in self.variants)})")
        if costs:
            lines.append(
                f"total {self.total_macs(costs) / 1e9:.2f} GMACs vs full {costs.full * self.num_steps / 1e9:.2f}"
                f" -> theoretical speedup {self.theoretical_speedup(costs):.2f}x"
            )
        return "\n".join(lines)
