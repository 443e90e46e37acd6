"""Typed schedule configs, diffusers' style: ``ditcache.apply(pipe, DeltaDiTConfig(steps=20, interval=2,
cached_blocks=21))``. Each config is the schedule.yaml of its kind as a frozen dataclass: it builds the mapping that
:func:`ditcache.graphs.schedule.parse_schedule` validates (the only validator, run when the config is made), loads
from that file (``BlockCacheConfig.from_file(path)``) and writes it back with paths relative to the file."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, TypeVar, Union

import yaml

from .schedule import Schedule, ScheduleError, parse_schedule, read_schedule_mapping

C = TypeVar("C", bound="_ScheduleConfig")


class _ScheduleConfig:
    """What the three configs share: the mapping, the Schedule, the file."""

    kind: ClassVar[str]
    _paths: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._paths:  # resolved now: the config means the same file from any working directory
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                object.__setattr__(self, name, Path(value).resolve())
        self.to_schedule()  # bad values fail here, with parse_schedule's message

    def to_mapping(self, relative_to: str | Path | None = None) -> dict[str, Any]:
        """The schedule.yaml mapping: fields left at None are left out; paths relative to the folder
        ``relative_to`` (absolute when None)."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in self._paths:
                value = str(value) if relative_to is None else relative_path(value, relative_to)
            elif f.name == "recompute":
                value = {int(block): [int(s) for s in steps] for block, steps in value.items()}
            elif isinstance(value, tuple):  # adaptive replay ranges and rescale polynomials: YAML lists
                value = list(value)
            out[f.name] = value
        return out

    def to_schedule(self, source: str | None = None) -> Schedule:
        """The validated Schedule (plan it with graphs.planning.plan_for)."""
        return parse_schedule(self.to_mapping(), source or type(self).__name__)

    def to_yaml(self, path: str | Path, header: str = "") -> str:
        """The text of schedule file ``path``: ``header`` (comment lines) then the mapping, paths relative to
        the file's folder."""
        body = yaml.safe_dump(self.to_mapping(relative_to=Path(path).resolve().parent), sort_keys=False)
        return header + body

    @classmethod
    def from_mapping(cls: type[C], data: Mapping[str, Any], base_dir: str | Path | None = None,
                     source: str = "<schedule>") -> C:
        """The config of a schedule.yaml mapping (paths relative to ``base_dir``, default the working directory)."""
        parse_schedule(data, source, Path(base_dir) if base_dir is not None else None)  # the one validator
        if data["kind"] != cls.kind:
            other = CONFIGS[data["kind"]].__name__
            raise ScheduleError(f"{source}: a {data['kind']} schedule, not {cls.kind}; load it with {other}")
        values = {k: v for k, v in data.items() if k != "kind"}
        for name in cls._paths:
            if values.get(name) is not None:
                values[name] = (Path(base_dir or Path.cwd()) / str(values[name])).resolve()
        return cls(**values)

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """Load and validate a schedule.yaml of this kind (its paths are relative to its folder)."""
        path = Path(path)
        return cls.from_mapping(read_schedule_mapping(path), path.parent, str(path))


@dataclass(frozen=True)
class FullConfig(_ScheduleConfig):
    """No caching: every step runs the whole denoiser (the reference a cached run is compared with).

    Args:
        steps: sampling steps.
    """

    steps: int
    kind: ClassVar[str] = "full"


@dataclass(frozen=True)
class DeltaDiTConfig(_ScheduleConfig):
    """Δ-DiT (Chen et al., 2024): a full step every ``interval`` steps; in between, the outline stage (steps before
    ``boundary``) replays the back ``cached_blocks`` blocks' offset and the detail stage the front ones.

    Args:
        steps: sampling steps.
        interval: N, a full step every N steps (with ``cached_blocks``, or neither and ``target_speedup``).
        cached_blocks: Nc, blocks replayed at a cached step.
        boundary: the step b where the detail stage starts; ``"auto"`` picks it from ``curves``.
        boundary_fraction: b as a fraction of ``steps`` instead (default 0.5).
        target_speedup: solve N and Nc for this theoretical speedup (MACs) on the model.
        cache: ``offset`` (replay adds the recorded out - in) or ``output`` (replay returns the recorded output).
        curves: change curves (``ditcache calibrate``) for ``boundary="auto"``.
    """

    steps: int
    interval: int | None = None
    cached_blocks: int | None = None
    boundary: int | str | None = None
    boundary_fraction: float | None = None
    target_speedup: float | None = None
    cache: str = "offset"
    curves: str | Path | None = None
    kind: ClassVar[str] = "delta-dit"
    _paths: ClassVar[tuple[str, ...]] = ("curves",)


@dataclass(frozen=True)
class BlockCacheConfig(_ScheduleConfig):
    """Block caching (Wimbauer et al., 2024): each block computes at the steps its recompute list names and
    replays its cached offset at the others; optionally a per-step, per-channel scale/shift of the replays.

    Args:
        steps: sampling steps.
        recompute: block index -> steps that compute it (each list holds step 0); or ``threshold`` + ``curves``.
        threshold: δ: recompute a block when its accumulated change since the last compute would exceed δ.
        curves: change curves (``ditcache calibrate``) the threshold is applied to.
        cache: ``offset`` or ``output``, as for Δ-DiT.
        scale_shift: a safetensors file of scale/shift corrections (``ditcache fit-correction``).
    """

    steps: int
    recompute: Mapping[int, Sequence[int]] | None = None
    threshold: float | None = None
    curves: str | Path | None = None
    cache: str = "offset"
    scale_shift: str | Path | None = None
    kind: ClassVar[str] = "block-cache"
    _paths: ClassVar[tuple[str, ...]] = ("curves", "scale_shift")


@dataclass(frozen=True)
class AdaptiveConfig(_ScheduleConfig):
    """Adaptive caching (FirstBlockCache / TeaCache style, with whole compiled graphs): every step runs a probe graph;
    the dispatcher then runs the compute or the replay graph from the probe's signal (docs/adaptive.md).

    Args:
        steps: sampling steps.
        threshold: accumulated budget per row; a batch replays while every row's accumulated rescaled signal since
            the last computed step stays below it (0: never replays, the full run).
        signal: ``first-block`` (the residual of the blocks before the replayed range) or ``modulated-input``
            (the replayed range's first block's timestep-modulated input).
        replay: ``rest`` ([1, Nb) for first-block, [0, Nb) for modulated-input) or a block range ``(start, end)``.
        warmup, final: first and last steps that always compute.
        max_consecutive: at most this many replays in a row.
        rescale: polynomial coefficients, highest power first (``ditcache calibrate --adaptive``).
        cache: ``offset`` (replay adds the recorded residual) or ``output``.
    """

    steps: int
    threshold: float
    signal: str = "first-block"
    replay: str | Sequence[int] = "rest"
    warmup: int = 2
    final: int = 1
    max_consecutive: int = 3
    rescale: Sequence[float] = ()
    cache: str = "offset"
    kind: ClassVar[str] = "adaptive"

    @classmethod
    def from_policy(cls, policy: Any) -> "AdaptiveConfig":
        """The config of a graphs.adaptive.AdaptivePolicy."""
        return cls(**{k: v for k, v in policy.to_dict().items()}, steps=policy.steps)


ScheduleConfig = Union[FullConfig, DeltaDiTConfig, BlockCacheConfig, AdaptiveConfig]
CONFIGS: dict[str, type[_ScheduleConfig]] = {c.kind: c for c in (FullConfig, DeltaDiTConfig, BlockCacheConfig,
                                                                  AdaptiveConfig)}


def config_from_file(path: str | Path) -> ScheduleConfig:
    """The typed config of any schedule.yaml (its kind picks the class)."""
    path = Path(path)
    data = read_schedule_mapping(path)
    kind = data.get("kind") if isinstance(data, Mapping) else None
    return CONFIGS.get(kind, FullConfig).from_mapping(data, path.parent, str(path))


def relative_path(path: str | Path, folder: str | Path) -> str:
    """``path`` as a schedule file in ``folder`` writes it: relative to the folder (POSIX separators)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()
