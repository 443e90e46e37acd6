"""Benchmark configuration: one YAML file -> a validated :class:`BenchConfig` -> the list of :class:`RowSpec`.

A config names the model, the request (images, classes, guidance, sampler, seed), the schedules (by path or
inline), the stock-pipeline baseline and a matrix of ``backends x precisions x schedules`` groups. Every row the
matrix names appears in the results: rows that cannot run (backend unavailable) or that the config chose not to
run (``skip: <reason>``, e.g. the time budget) are kept as ``skipped: <reason>`` rows, never silently dropped.

Keys (unknown keys are rejected with the allowed ones listed)::

    name: cpu-dit-xl                # results go to benchmarks/results/<name>/ (default: the file's stem)
    description: one paragraph      # printed in results.md, say which reductions were chosen and why
    model: dit-xl                   # registry name
    weights: null                   # local weights path; or random_weights: true (created once, cached)
    random_weights: true
    device: cpu                     # cpu | cuda
    threads: null                   # torch intra-op threads per row (null: torch's default)
    images: 1                       # images per sampling call (model batch doubles under guidance)
    classes: [207]                  # one label per image (default: 0, 1, ...); class-conditional models
    embeddings: null                # text-conditioned models (PixArt-α): prompt-embeddings safetensors (one row
                                    # per image, or one shared row); null: synthetic embeddings (timing only)
    guidance: 4.0
    scheduler: ddim
    seed: 0
    warmup: variants                # variants: each distinct step program once | run: one full sampling run
    repeats: 3                      # timed sampling runs per row (after warm-up)
    step_timing: inline             # inline: Dispatcher.timing during the timed runs | separate: one extra run
    granularity: segment            # engine granularity of compiled rows (variant | segment)
    validate: true                  # export-engines validates every graph against eager
    row_timeout_s: 1800
    time_budget_s: 780              # a row starts only if elapsed + its group's estimate_s fits in the budget
    time_limit_s: 870               # hard: a row still running then is killed (and says so)
    backend_options: {onnxruntime: {threads: 2}}
    schedules: {full-20: {kind: full, steps: 20}, delta-20: ../../schedules/dit-xl-delta-20.yaml}
    baseline: {precision: fp32, schedules: [full-20]}   # stock diffusers DiTPipeline rows
    matrix:
      - {backends: [eager], precisions: [fp32], schedules: [full-20, delta-20]}
      - {backends: [inductor], precisions: [bf16], schedules: [full-20], estimate_s: 120, note: "why"}
      - {backends: [onnxruntime], precisions: [fp32], schedules: [full-20], skip: "not run: <why>"}
      - {peer: fbc, thresholds: [0.05, 0.12]}   # peers on the stock pipeline (benchmarks/bench_peers.py)

Rows run in this order: put the ones that answer the question first, so that a time budget drops the rest.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ditcache.compiler.backend import PRECISIONS
from ditcache.graphs.schedule import read_yaml_document

BACKEND_STOCK = "diffusers"  # the stock DiTPipeline rows
EAGER = "eager"
WARMUPS = ("variants", "run")
STEP_TIMINGS = ("inline", "separate")

_TOP_KEYS = {
    "name", "description", "model", "weights", "random_weights", "device", "threads", "images", "classes",
    "guidance", "scheduler", "seed", "warmup", "repeats", "step_timing", "granularity", "validate",
    "row_timeout_s", "backend_options", "schedules", "baseline", "matrix", "resolution", "time_budget_s",
    "time_limit_s", "embeddings", "frames",
}
_GROUP_KEYS = {"backends", "precisions", "schedules", "skip", "granularity", "repeats", "validate", "estimate_s",
               "note"}
_BASELINE_KEYS = {"precision", "schedules", "skip", "estimate_s"}


class ConfigError(ValueError):
    """A benchmark config that is malformed; the message says the fix."""


@dataclass(frozen=True)
class ScheduleRef:
    """A named schedule: a file (``path``) or an inline mapping (``inline``)."""

    name: str
    path: str | None = None
    inline: Mapping[str, Any] | None = None

    def load(self):
        from ditcache.graphs.schedule import load_schedule, parse_schedule

        if self.path is not None:
            return load_schedule(self.path)
        return parse_schedule(dict(self.inline or {}), source=f"schedule {self.name!r}")


@dataclass
class BenchConfig:
    """A validated benchmark config (see the module docstring for the keys)."""

    name: str
    source: str
    model: str
    description: str = ""
    weights: str | None = None
    random_weights: bool = False
    device: str = "cpu"
    threads: int | None = None
    images: int = 1
    classes: tuple[int, ...] = ()
    guidance: float = 4.0
    scheduler: str = "ddim"
    seed: int = 0
    warmup: str = "variants"
    repeats: int = 3
    step_timing: str = "inline"
    granularity: str = "segment"
    validate: bool = True
    row_timeout_s: float = 1800.0
    time_budget_s: float | None = None
    time_limit_s: float | None = None
    resolution: int | None = None
    frames: int | None = None  # video models (Wan): frames per clip (None: the model's)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedules: dict[str, ScheduleRef] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    matrix: list[dict[str, Any]] = field(default_factory=list)
    text: bool = False  # the model is text-conditioned (prompt embeddings instead of class labels)
    embeddings: str | None = None

    @property
    def class_labels(self) -> tuple[int, ...]:
        return () if self.text else self.classes or tuple(range(self.images))

    @property
    def model_batch(self) -> int:
        from ditcache.graphs.registry import get_spec

        return self.images * (2 if get_spec(self.model).cfg_batch(self.guidance) else 1)


@dataclass
class RowSpec:
    """One row of the results table: what a worker runs (or why it does not).

    Args:
        id: ``<backend>/<precision>/<schedule>``, unique.
        kind: ``stock`` (diffusers DiTPipeline), ``ditcache-eager``, ``compiled`` or ``peer`` (a peer's cache on
            the stock pipeline: ``peer`` holds its method and settings, benchmarks/bench_peers.py).
        skip: reason the row does not run (None: it runs).
    """

    id: str
    kind: str
    backend: str
    precision: str
    schedule: str
    schedule_path: str | None
    schedule_inline: dict[str, Any] | None
    steps: int
    model: str
    device: str
    threads: int | None
    class_labels: tuple[int, ...]
    guidance: float
    scheduler: str
    seed: int
    warmup: str
    repeats: int
    step_timing: str
    granularity: str
    validate: bool
    options: dict[str, Any]
    resolution: int | None = None
    weights: str | None = None  # filled in by the runner (the cached random weights file)
    skip: str | None = None
    estimate_s: float | None = None  # rough row time on the target machine, for the time budget only
    note: str | None = None
    images: int | None = None  # text-conditioned models: images per call (class models: one per label)
    embeddings: str | None = None  # text-conditioned models: prompt-embeddings file (None: synthetic)
    frames: int | None = None  # video models: frames per clip (None: the model's)
    peer: dict[str, Any] | None = None  # peer rows: {method, threshold, compiled, ...} (bench_peers.parse_peer_group)

    @property
    def num_images(self) -> int:
        return self.images if self.images is not None else len(self.class_labels)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RowSpec":
        data = dict(data)
        data["class_labels"] = tuple(data["class_labels"])
        return cls(**data)

    def key(self) -> str:
        """Hash of everything that changes the row's measurement (for --resume)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("skip", "estimate_s", "note")
                and not (k in ("images", "embeddings", "frames", "peer") and v is None)}  # keys of class-model rows unchanged
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---- parsing ----------------------------------------------------------------------------------------------
def _unknown(data: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint} (allowed: {', '.join(sorted(allowed))})")


def _list(value: Any, where: str) -> list:
    if isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list (got {value!r})")
    return value


def load_config(path: str | Path) -> BenchConfig:
    """Read and validate a benchmark config YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} does not exist (see benchmarks/configs/)")
    data = read_yaml_document(path, ConfigError, "benchmark config")
    return parse_config(data, source=str(path), base_dir=path.parent, default_name=path.stem)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None,
                 default_name: str = "bench") -> BenchConfig:
    from ditcache.compiler.runtime.sampling import SCHEDULERS
    from ditcache.graphs.registry import MODELS

    base_dir = base_dir or Path.cwd()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a benchmark config is a mapping (see benchmarks/configs/tiny.yaml)")
    _unknown(data, _TOP_KEYS, source)
    for key in ("model", "schedules", "matrix"):
        if key not in data:
            raise ConfigError(f"{source}: {key!r} is required")
    if data["model"] not in MODELS:
        raise ConfigError(f"{source}: unknown model {data['model']!r}; choose one of: {', '.join(MODELS)}")
    cfg = BenchConfig(name=str(data.get("name") or default_name), source=source, model=data["model"])
    cfg.description = str(data.get("description") or "").strip()
    cfg.weights = data.get("weights")
    if cfg.weights is not None:
        weights = Path(str(cfg.weights)).expanduser()
        cfg.weights = str(weights if weights.is_absolute() else (base_dir / weights).resolve())
    cfg.random_weights = bool(data.get("random_weights", False))
    if (cfg.weights is None) == (not cfg.random_weights):
        raise ConfigError(f"{source}: give exactly one of 'weights: PATH' and 'random_weights: true'")
    cfg.device = str(data.get("device", "cpu"))
    if cfg.device not in ("cpu", "cuda"):
        raise ConfigError(f"{source}: 'device' must be cpu or cuda (got {cfg.device!r})")
    cfg.threads = data.get("threads")
    if cfg.threads is not None and (not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise ConfigError(f"{source}: 'threads' must be a positive integer or null")
    cfg.images = int(data.get("images", 1))
    from ditcache.graphs.registry import get_spec

    cfg.text = get_spec(cfg.model).text_conditioned
    classes = data.get("classes")
    if cfg.text and classes is not None:
        raise ConfigError(f"{source}: {cfg.model} is text-conditioned: drop 'classes' (give 'embeddings: PATH' or "
                          f"leave it out for synthetic prompt embeddings)")
    if data.get("embeddings") is not None:
        if not cfg.text:
            raise ConfigError(f"{source}: 'embeddings' applies to text-conditioned models, {cfg.model} takes 'classes'")
        embeddings = Path(str(data["embeddings"])).expanduser()
        cfg.embeddings = str(embeddings if embeddings.is_absolute() else (base_dir / embeddings).resolve())
        if not Path(cfg.embeddings).is_file():
            raise ConfigError(f"{source}: embeddings file {cfg.embeddings!r} does not exist")
    if classes is not None:
        cfg.classes = tuple(int(c) for c in _list(classes, f"{source}: 'classes'"))
        if len(cfg.classes) != cfg.images:
            raise ConfigError(f"{source}: {len(cfg.classes)} classes for images: {cfg.images}; give one per image")
    if cfg.images < 1:
        raise ConfigError(f"{source}: 'images' must be >= 1")
    cfg.guidance = float(data.get("guidance", 4.0))
    cfg.scheduler = str(data.get("scheduler", "ddim"))
    if cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"{source}: 'scheduler' must be one of {', '.join(SCHEDULERS)}")
    cfg.seed = int(data.get("seed", 0))
    cfg.warmup = str(data.get("warmup", "variants"))
    if cfg.warmup not in WARMUPS:
        raise ConfigError(f"{source}: 'warmup' must be one of {', '.join(WARMUPS)}")
    cfg.repeats = int(data.get("repeats", 3))
    if cfg.repeats < 1:
        raise ConfigError(f"{source}: 'repeats' must be >= 1")
    cfg.step_timing = str(data.get("step_timing", "inline"))
    if cfg.step_timing not in STEP_TIMINGS:
        raise ConfigError(f"{source}: 'step_timing' must be one of {', '.join(STEP_TIMINGS)}")
    cfg.granularity = str(data.get("granularity", "segment"))
    if cfg.granularity not in ("variant", "segment"):
        raise ConfigError(f"{source}: 'granularity' must be variant or segment")
    cfg.validate = bool(data.get("validate", True))
    cfg.row_timeout_s = float(data.get("row_timeout_s", 1800))
    budget = data.get("time_budget_s")
    cfg.time_budget_s = None if budget is None else float(budget)
    limit = data.get("time_limit_s")
    cfg.time_limit_s = None if limit is None else float(limit)
    cfg.resolution = data.get("resolution")
    cfg.frames = None if data.get("frames") is None else int(data["frames"])
    try:
        from ditcache.graphs.registry import at_resolution

        at_resolution(get_spec(cfg.model), cfg.resolution, cfg.frames)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    options = data.get("backend_options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        raise ConfigError(f"{source}: 'backend_options' maps backend -> {{option: value}}")
    cfg.backend_options = {str(k): dict(v) for k, v in options.items()}

    schedules = data["schedules"]
    if not isinstance(schedules, Mapping) or not schedules:
        raise ConfigError(f"{source}: 'schedules' maps a short name -> schedule file path or inline schedule")
    for name, value in schedules.items():
        if isinstance(value, str):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else (base_dir / path).resolve()
            if not path.is_file():
                raise ConfigError(f"{source}: schedule {name!r}: file {str(path)!r} does not exist "
                                  f"(paths are relative to the config file)")
            cfg.schedules[str(name)] = ScheduleRef(str(name), path=str(path))
        elif isinstance(value, Mapping):
            cfg.schedules[str(name)] = ScheduleRef(str(name), inline=dict(value))
        else:
            raise ConfigError(f"{source}: schedule {name!r} must be a path or a mapping")
        cfg.schedules[str(name)].load()  # validate now, not an hour into the run

    baseline = data.get("baseline") or {}
    if not isinstance(baseline, Mapping):
        raise ConfigError(f"{source}: 'baseline' is a mapping {{precision, schedules}}")
    _unknown(baseline, _BASELINE_KEYS, f"{source}: baseline")
    cfg.baseline = {"precision": str(baseline.get("precision", "fp32")),
                    "schedules": [str(s) for s in _list(baseline.get("schedules", []) or [], "baseline.schedules")]
                    if baseline.get("schedules") else [],
                    "skip": baseline.get("skip"), "estimate_s": baseline.get("estimate_s")}
    for s in cfg.baseline["schedules"]:
        _known_schedule(cfg, s, f"{source}: baseline")

    matrix = data["matrix"]
    if not isinstance(matrix, list) or not matrix:
        raise ConfigError(f"{source}: 'matrix' is a list of {{backends, precisions, schedules}} groups")
    for i, group in enumerate(matrix):
        where = f"{source}: matrix[{i}]"
        if not isinstance(group, Mapping):
            raise ConfigError(f"{where} must be a mapping")
        if "peer" in group:
            from .bench_peers import parse_peer_group

            baseline_schedule = next(iter(cfg.baseline["schedules"]), None)
            cfg.matrix.append(parse_peer_group(group, where, cfg.schedules, baseline_schedule, ConfigError))
            continue
        _unknown(group, _GROUP_KEYS, where)
        g = {"backends": [str(b) for b in _list(group.get("backends"), f"{where}.backends")],
             "precisions": [str(p) for p in _list(group.get("precisions", ["fp32"]), f"{where}.precisions")],
             "schedules": [str(s) for s in _list(group.get("schedules"), f"{where}.schedules")],
             "skip": group.get("skip"), "granularity": group.get("granularity"),
             "repeats": group.get("repeats"), "validate": group.get("validate"),
             "estimate_s": group.get("estimate_s"), "note": group.get("note")}
        for p in g["precisions"]:
            if p not in PRECISIONS:
                raise ConfigError(f"{where}: precision {p!r} is not one of {', '.join(PRECISIONS)}")
        for s in g["schedules"]:
            _known_schedule(cfg, s, where)
        cfg.matrix.append(g)
    return cfg


def _known_schedule(cfg: BenchConfig, name: str, where: str) -> None:
    if name not in cfg.schedules:
        raise ConfigError(f"{where}: schedule {name!r} is not under 'schedules' (have: {', '.join(cfg.schedules)})")


# ---- rows -------------------------------------------------------------------------------------------------
def build_rows(cfg: BenchConfig) -> list[RowSpec]:
    """Every row of the config in table order: stock baseline, then the matrix groups in order."""
    rows: list[RowSpec] = []
    seen: set[str] = set()

    def add(kind: str, backend: str, precision: str, schedule: str, skip: str | None, group: Mapping[str, Any],
            peer: dict[str, Any] | None = None, label: str | None = None):
        row_id = f"{label or backend}/{precision}/{schedule}"
        granularity = str(group.get("granularity") or cfg.granularity)
        if kind == "compiled" and granularity != cfg.granularity:
            row_id += f"@{granularity}"  # the same row at the other engine granularity
        if row_id in seen:
            return
        seen.add(row_id)
        ref = cfg.schedules[schedule]
        rows.append(RowSpec(
            id=row_id, kind=kind, backend=backend, precision=precision, schedule=schedule,
            schedule_path=ref.path, schedule_inline=dict(ref.inline) if ref.inline is not None else None,
            steps=ref.load().steps, model=cfg.model, device=cfg.device, threads=cfg.threads,
            class_labels=cfg.class_labels, guidance=cfg.guidance, scheduler=cfg.scheduler, seed=cfg.seed,
            warmup=cfg.warmup, repeats=int(group.get("repeats") or cfg.repeats), step_timing=cfg.step_timing,
            granularity=granularity,
            validate=cfg.validate if group.get("validate") is None else bool(group["validate"]),
            options=dict(cfg.backend_options.get(backend, {})), resolution=cfg.resolution,
            weights=cfg.weights, skip=str(skip) if skip else None,
            estimate_s=None if group.get("estimate_s") is None else float(group["estimate_s"]),
            note=group.get("note"), images=cfg.images if cfg.text else None, embeddings=cfg.embeddings,
            frames=cfg.frames, peer=peer,
        ))

    for s in cfg.baseline.get("schedules", []):
        add("stock", BACKEND_STOCK, cfg.baseline["precision"], s, cfg.baseline.get("skip"), cfg.baseline)
    for group in cfg.matrix:
        if "peer" in group:
            from .bench_peers import PEER_KIND, peer_backend, peer_label

            for peer in group["rows"]:
                settings = {k: v for k, v in peer.items() if k != "precision"}
                add(PEER_KIND, peer_backend(peer), peer["precision"], group["schedule"], group.get("skip"), group,
                    settings, peer_label(peer))
            continue
        for backend in group["backends"]:
            kind = "ditcache-eager" if backend == EAGER else "compiled"
            for precision in group["precisions"]:
                for s in group["schedules"]:
                    add(kind, backend, precision, s, group.get("skip"), group)
    return rows
