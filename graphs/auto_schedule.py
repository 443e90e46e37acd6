"""Block-caching schedules chosen automatically: from measured change curves (a threshold δ, or the δ that meets a
target), or by a search over which cache units replay at which steps that minimises a measured error for a MAC budget
(the error is measured by compiler.calibration.search; the file is written from a graphs.configs.BlockCacheConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .macs import SegmentCosts
from .plan import CacheRange, Plan
from .schedule_rules import block_cache_replays, block_ranges, threshold_recompute


def plan_for_threshold(mean: Sequence[Sequence[float]], threshold: float, cache: str = "offset") -> Plan:
    """The block-caching plan that threshold δ gives on these curves."""
    steps = len(mean[0])
    recompute = {i: threshold_recompute(row, threshold) for i, row in enumerate(mean)}
    return Plan.from_replays(len(mean), block_ranges(recompute), block_cache_replays(steps, recompute), cache)


def threshold_for_target(mean: Sequence[Sequence[float]], target_speedup: float, costs: SegmentCosts | None = None,
                         iterations: int = 60) -> float:
    """Smallest δ whose plan reaches ``target_speedup`` in MACs (bisection: speedup grows with δ)."""
    costs = costs or SegmentCosts(0, (1,) * len(mean), 0)
    high = sum(sum(row[1:]) for row in mean) + 1.0
    best = plan_for_threshold(mean, high).theoretical_speedup(costs)
    if best < target_speedup:
        raise ValueError(f"target speedup {target_speedup} is out of reach: replaying every block after step 0 "
                         f"gives {best:.2f}x")
    low = 0.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if plan_for_threshold(mean, middle).theoretical_speedup(costs) >= target_speedup:
            high = middle
        else:
            low = middle
    return high


# ---- error-driven search (the measurement is compiler.calibration.search's) -------------------------------------
Move = tuple[int, int]  # (step s, unit index u): "replay unit u at step s"


@dataclass(frozen=True)
class MacBudget:
    """A run's MAC budget: a plan meets it when its theoretical speedup (full MACs / its MACs, as
    :meth:`Plan.theoretical_speedup` computes it) reaches ``target_speedup``.

    Args:
        target_speedup: the speedup to reach (``--target-speedup X``, or 1 / ``--mac-fraction f``).
        label: how the user gave it, for messages and metadata (``2.0x``, ``mac-fraction 0.5``).
    """

    target_speedup: float
    label: str

    @classmethod
    def of(cls, target_speedup: float | None = None, mac_fraction: float | None = None) -> "MacBudget":
        """The budget of exactly one of ``target_speedup`` (>= 1) and ``mac_fraction`` (in (0, 1])."""
        if (target_speedup is None) == (mac_fraction is None):
            raise ValueError("give exactly one of --target-speedup and --mac-fraction (the MAC budget)")
        if target_speedup is not None:
            if not target_speedup >= 1.0:
                raise ValueError(f"target speedup must be >= 1 (got {target_speedup}); e.g. --target-speedup 2.0")
            return cls(float(target_speedup), f"{target_speedup:g}x")
        if not 0.0 < mac_fraction <= 1.0:
            raise ValueError(f"MAC fraction must be in (0, 1] (got {mac_fraction}); e.g. --mac-fraction 0.5")
        return cls(1.0 / float(mac_fraction), f"mac-fraction {mac_fraction:g}")

    def met(self, total_macs: int, costs: SegmentCosts, steps: int) -> bool:
        """Whether a run of ``steps`` steps costing ``total_macs`` reaches the target (Plan's arithmetic)."""
        return costs.full * steps / total_macs >= self.target_speedup


@dataclass(frozen=True)
class SearchSpace:
    """What the search may replay: ``units`` (contiguous, non-overlapping block ranges) at steps 1..T-1; step 0
    computes everything, so every subset of moves is a feasible plan.

    Args:
        num_blocks: blocks of the denoiser.
        steps: sampling steps T.
        units: the cache units, in block order (``block_units`` makes them).
        cache: ``offset`` or ``output`` replay.
    """

    num_blocks: int
    steps: int
    units: tuple[CacheRange, ...]
    cache: str = "offset"

    def __post_init__(self) -> None:
        ordered = sorted(self.units, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if a.overlaps(b):
                raise ValueError(f"search units {a.name} and {b.name} overlap; units are disjoint block ranges")
        if self.steps < 2:
            raise ValueError(f"a search needs at least 2 steps (step 0 always computes), got {self.steps}")

    @property
    def moves(self) -> tuple[Move, ...]:
        return tuple((s, u) for s in range(1, self.steps) for u in range(len(self.units)))

    def replays(self, moves: Iterable[Move]) -> list[set[str]]:
        """Per step, the names of the units replayed."""
        out: list[set[str]] = [set() for _ in range(self.steps)]
        for s, u in moves:
            out[s].add(self.units[u].name)
        return out

    def plan(self, moves: Iterable[Move]) -> Plan:
        """The plan of a set of moves over the units (Plan.from_replays checks feasibility)."""
        return Plan.from_replays(self.num_blocks, self.units, self.replays(moves), self.cache)

    def recompute(self, moves: Iterable[Move]) -> dict[int, list[int]]:
        """The block-cache ``recompute`` table of a set of moves: every block of a unit computes where the unit
        does (blocks in no unit compute at every step)."""
        replayed = self.replays(moves)
        table = {}
        for b in range(self.num_blocks):
            unit = next((r for r in self.units if r.start <= b < r.end), None)
            table[b] = [s for s in range(self.steps) if unit is None or unit.name not in replayed[s]]
        return table

    def unit_macs(self, u: int, costs: SegmentCosts) -> int:
        """MACs one replay of unit ``u`` saves."""
        return costs.blocks_range(self.units[u].start, self.units[u].end)

    def total_macs(self, moves: Iterable[Move], costs: SegmentCosts) -> int:
        """The run's MACs with these moves (equal to ``self.plan(moves).total_macs(costs)``)."""
        return costs.full * self.steps - sum(self.unit_macs(u, costs) for _, u in moves)


def block_units(num_blocks: int, unit_blocks: int = 1) -> tuple[CacheRange, ...]:
    """Cache units of ``unit_blocks`` consecutive blocks (the last one shorter); single blocks are named as
    block caching names them (``b3``)."""
    if unit_blocks < 1:
        raise ValueError(f"unit size must be >= 1 block (got {unit_blocks})")
    out = []
    for start in range(0, num_blocks, unit_blocks):
        end = min(start + unit_blocks, num_blocks)
        out.append(CacheRange(f"b{start}" if end == start + 1 else f"u{start}-{end - 1}", start, end))
    return tuple(out)


@dataclass(frozen=True)
class SearchResult:
    """The moves a search chose, their measured objective, and the path it took.

    Args:
        moves: the replays chosen.
        error: the objective of ``moves`` (lower is better).
        speedup: the plan's theoretical speedup in MACs.
        trace: (number of moves, theoretical speedup, objective) after each accepted iteration of the best state.
        evaluations: objective calls made.
        order: ``moves`` in the order the search added them (a greedy search's result for a smaller budget is
            the shortest prefix that meets it: :func:`prefix_meeting`).
    """

    moves: frozenset[Move]
    error: float
    speedup: float
    trace: tuple[tuple[int, float, float], ...] = ()
    evaluations: int = 0
    order: tuple[Move, ...] = ()


def prefix_meeting(space: SearchSpace, costs: SegmentCosts, order: Sequence[Move],
                   budget: MacBudget) -> frozenset[Move]:
    """The shortest prefix of ``order`` that meets ``budget`` (ValueError when the whole order does not)."""
    for n in range(len(order) + 1):
        if budget.met(space.total_macs(order[:n], costs), costs, space.steps):
            return frozenset(order[:n])
    raise ValueError(f"the search path stops before the MAC budget {budget.label}; search with that budget")


Objective = Callable[[frozenset[Move]], float]


def check_reachable(space: SearchSpace, costs: SegmentCosts, budget: MacBudget) -> None:
    """Raise ValueError, naming the best reachable speedup, when no set of moves meets ``budget``."""
    everything = space.moves
    if not budget.met(space.total_macs(everything, costs), costs, space.steps):
        top = costs.full * space.steps / space.total_macs(everything, costs)
        raise ValueError(f"MAC budget {budget.label} is out of reach for {space.steps} steps: replaying every unit at "
                         f"every step after step 0 gives {top:.3f}x; lower the target or use more steps")


def search_schedule(space: SearchSpace, costs: SegmentCosts, budget: MacBudget, objective: Objective,
                    beam_width: int = 1, lazy: bool = True,
                    progress: Callable[[int, float], None] | None = None) -> SearchResult:
    """Beam search (greedy for ``beam_width`` 1) for the moves that meet ``budget`` with the least ``objective``.

    Each iteration extends every state of the beam by one move, ranks the children by objective increase per MAC
    saved (relative to the empty set), and keeps the best ``beam_width`` distinct ones; a state stops growing as
    soon as it meets the budget, so the result overshoots the budget by less than one move. Greedy with ``lazy``
    re-measures only the moves it is about to take (CELF: a move's stale increase is a lower bound while increases
    only grow as moves are added, which replaying more makes the rule; where it is not, the move taken is still
    measured against the current set). ``progress(moves, objective)`` is called after each iteration. Raises
    ValueError, naming the best reachable speedup, when replaying every unit at every step after the first does
    not meet the budget.
    """
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1 (got {beam_width})")
    check_reachable(space, costs, budget)
    calls = 0

    def measure(moves: frozenset[Move]) -> float:
        nonlocal calls
        calls += 1
        return objective(moves)

    if beam_width == 1 and lazy:
        return _lazy_greedy(space, costs, budget, measure, progress, lambda: calls)
    empty = frozenset()
    base = measure(empty)
    beam: list[tuple[float, frozenset[Move], float]] = [(0.0, empty, base)]  # (rank, moves, objective)
    finished: list[tuple[float, frozenset[Move]]] = []
    traces: dict[frozenset[Move], tuple[tuple[int, float, float], ...]] = {empty: ()}
    orders: dict[frozenset[Move], tuple[Move, ...]] = {empty: ()}
    if budget.met(space.total_macs(empty, costs), costs, space.steps):
        finished.append((base, empty))
        beam = []
    while beam:
        children: dict[frozenset[Move], tuple[float, float]] = {}
        for _, moves, _error in beam:
            for move in space.moves:
                if move in moves:
                    continue
                child = moves | {move}
                if child in children:
                    continue
                error = measure(child)
                saved = costs.full * space.steps - space.total_macs(child, costs)
                children[child] = ((error - base) / max(saved, 1), error)
                traces.setdefault(child, traces[moves] + ((len(child), costs.full * space.steps /
                                                           space.total_macs(child, costs), error),))
                orders.setdefault(child, orders[moves] + (move,))
        ranked = sorted(children.items(), key=lambda kv: (kv[1][0], kv[1][1], sorted(kv[0])))[:beam_width]
        beam = []
        for child, (rank, error) in ranked:
            if budget.met(space.total_macs(child, costs), costs, space.steps):
                finished.append((error, child))
            else:
                beam.append((rank, child, error))
        if progress is not None and ranked:
            best = ranked[0]
            progress(len(best[0]), best[1][1])
    error, moves = min(finished, key=lambda e: (e[0], sorted(e[1])))
    return SearchResult(moves, error, costs.full * space.steps / space.total_macs(moves, costs), traces[moves], calls,
                        orders[moves])


def _lazy_greedy(space: SearchSpace, costs: SegmentCosts, budget: MacBudget, measure: Objective,
                 progress: Callable[[int, float], None] | None, calls: Callable[[], int]) -> SearchResult:
    """Greedy with lazy re-measurement (see :func:`search_schedule`)."""
    import heapq

    total = costs.full * space.steps
    moves: frozenset[Move] = frozenset()
    error = measure(moves)
    trace: list[tuple[int, float, float]] = []
    order: list[Move] = []
    # (increase per MAC saved, move, iteration it was measured at)
    heap = [((measure(frozenset({m})) - error) / max(space.unit_macs(m[1], costs), 1), m, 0) for m in space.moves]
    heapq.heapify(heap)
    iteration = 0
    while not budget.met(space.total_macs(moves, costs), costs, space.steps):
        while True:
            score, move, measured_at = heapq.heappop(heap)
            if measured_at == iteration:
                break
            child_error = measure(moves | {move})
            heapq.heappush(heap, ((child_error - error) / max(space.unit_macs(move[1], costs), 1), move, iteration))
        moves = moves | {move}
        order.append(move)
        error = error + score * max(space.unit_macs(move[1], costs), 1)
        iteration += 1
        trace.append((len(moves), total / space.total_macs(moves, costs), error))
        if progress is not None:
            progress(len(moves), error)
    error = measure(moves)
    return SearchResult(moves, error, total / space.total_macs(moves, costs), tuple(trace), calls(), tuple(order))
