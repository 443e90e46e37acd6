"""export-engines: compile every graph of a plan, validate it against eager, write the manifest last."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from importlib.metadata import version as _package_version
from ditcache.compiler.atomic import atomic_path
from ditcache.compiler.backend import BuildSettings, GraphSpec, get_backend, require
from ditcache.compiler.graph_specs import plan_graphs
from ditcache.graphs import parts_for
from ditcache.graphs.adaptive import is_adaptive
from ditcache.graphs.corrections import layout_metadata, load_corrections, range_correction_shapes, read_corrections
from ditcache.graphs.plan import Plan
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import at_resolution, get_spec
from ditcache.graphs.schedule import load_schedule
from ditcache.graphs.streams import streams_of
from ditcache.graphs.weights import load_model, sha256_file

from .manifest import FORMAT_VERSION, MANIFEST_NAME, ArtifactRecord, Manifest
from .store import artifact_dir, artifact_key, commit, remove_stale, staging_dir, verify
from .validate import validate
from .weights import export_weights, missing_shared, remove_stale_weights

DITCACHE_VERSION = _package_version("ditcache")
DEFAULT_GRANULARITY = {"tensorrt": "segment"}  # TensorRT cannot share weights between engines


@dataclass
class ExportRequest:
    """Arguments of ``export-engines`` (see its --help)."""

    model: str
    schedule: str | Path
    out: str | Path
    backend: str = "onnxruntime"
    weights: str | None = None
    random_weights: bool = False
    precision: str = "fp32"
    batch_size: int = 1
    guidance: bool = True
    resolution: int | None = None
    frames: int | None = None  # video models: frames per clip (None: the model's)
    granularity: str | None = None
    device: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)
    validate: bool = True


@dataclass
class GraphReport:
    name: str
    status: str  # built | reused
    bytes: int
    seconds: float
    validation: dict[str, float]


@dataclass
class ExportReport:
    directory: Path
    manifest: Manifest
    graphs: list[GraphReport]
    removed: list[str]
    seconds: float

    @property
    def rebuilt(self) -> list[str]:
        return [g.name for g in self.graphs if g.status == "built"]

    def summary(self) -> str:
        m = self.manifest
        lines = [f"{'graph':<44}{'status':>8}{'MiB':>9}{'build s':>9}{'max-abs':>11}{'cosine':>10}"]
        for g in self.graphs:
            v = g.validation
            lines.append(f"{g.name:<44}{g.status:>8}{g.bytes / 2**20:>9.1f}{g.seconds:>9.1f}"
                         f"{v.get('max_abs', float('nan')):>11.2e}{v.get('cosine', float('nan')):>10.6f}")
        total = sum(g.bytes for g in self.graphs)
        shared = "" if m.weights is None else f" + {m.weights.bytes / 2**20:.1f} MiB of weights, stored once"
        lines.append(
            f"{len(m.variants)} variants, {len(m.artifacts)} graphs ({m.granularity} granularity), "
            f"{total / 2**20:.1f} MiB on disk{shared}, "
            f"backend {m.backend['name']} {m.backend['settings']['precision']}, "
            f"model batch {m.batch['model_batch']}; {len(self.rebuilt)} built, "
            f"{len(self.graphs) - len(self.rebuilt)} reused, {self.seconds:.1f} s"
        )
        if not self.rebuilt:
            lines.append("nothing changed: no graph was rebuilt")
        return "\n".join(lines)


def graph_program(graph: GraphSpec, plan: Plan) -> dict[str, Any]:
    """What the graph computes beyond its name: the plan layout for variants and adaptive programs (not the
    policy: a new threshold or rescale rebuilds nothing), nothing more for segments."""
    if is_adaptive(plan):
        layout = plan.to_dict()
        return {k: layout[k] for k in ("kind", "num_blocks", "cache", "ranges")} | {
            "signal": plan.policy.signal, "program": graph.name}
    if graph.name.startswith("variant."):
        layout = plan.to_dict()
        return {k: layout[k] for k in ("num_blocks", "cache", "corrected", "ranges")} | {
            "variant": layout["variants"][graph.name.removeprefix("variant.")]}
    return {}


def export_engines(request: ExportRequest, log: Callable[[str], None] = print, progress: bool = True) -> ExportReport:
    """Build (or reuse), validate and record every graph of the request's plan in ``request.out``."""
    start = time.perf_counter()
    spec = at_resolution(get_spec(request.model), request.resolution, request.frames)
    if request.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1 (got {request.batch_size})")
    backend = get_backend(request.backend)
    settings = BuildSettings(request.precision, request.device, dict(request.options))
    if request.precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"--precision must be fp32, fp16 or bf16 (got {request.precision!r})")
    require(backend, settings)
    granularity = request.granularity or DEFAULT_GRANULARITY.get(backend.name, "variant")
    schedule = load_schedule(request.schedule)
    plan = plan_for(schedule, spec)
    model, weights = load_model(spec, request.weights, request.random_weights)
    if weights.random:
        log(f"WARNING: {spec.name} has RANDOM weights: for timing only")
    model_batch = request.batch_size * (2 if request.guidance else 1)
    dtype = settings.dtype
    device = torch.device(request.device)

    reference_parts = parts_for(model, spec)
    build_model = model if dtype == torch.float32 and device.type == "cpu" else copy.deepcopy(model).to(device, dtype)
    build_parts = parts_for(build_model.eval(), spec)
    what = f"{len(plan.programs)} adaptive programs" if is_adaptive(plan) else f"{len(plan.variants)} variants"
    log(f"building graphs of {what} ({granularity} granularity, model batch {model_batch})")
    graphs = plan_graphs(build_parts, plan, granularity, model_batch, dtype)
    references = graphs if build_model is model else plan_graphs(reference_parts, plan, granularity, model_batch,
                                                                 torch.float32)
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # an interrupted export must not leave a loadable directory
    shared = export_weights(backend, out, build_model, settings, weights.sha256)
    with_weights = {} if shared is None else {"weights": shared.shared}  # weights once, for every graph

    versions = backend.versions()
    load_time = set(getattr(backend, "runtime_options", ()))  # e.g. threads: no effect on the artifact
    keyed = settings.to_dict()
    keyed["options"] = {k: v for k, v in keyed["options"].items() if k not in load_time}
    identity = {"format": FORMAT_VERSION, "ditcache": DITCACHE_VERSION, "model": spec.name,
                "config": dict(spec.config), "weights_sha256": weights.sha256, "weights_format": weights.format,
                "backend": backend.name, "settings": keyed, "versions": versions}
    records: dict[str, ArtifactRecord] = {}
    reports: list[GraphReport] = []
    iterator = zip(graphs, references)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc=f"export {backend.name}", unit="graph")
    for graph, reference in iterator:
        key = artifact_key({**identity, "graph": graph.name, "signature": graph.signature(),
                            "program": graph_program(graph, plan)})
        final = artifact_dir(out, graph.name, key)
        previous = _previous_record(final, out)
        if previous is not None and missing_shared(out, previous):
            previous = None  # a shared file it references is gone: build it again (which writes that file)
        if previous is not None:
            record, status = previous, "reused"
        else:
            t0 = time.perf_counter()
            tmp = staging_dir(out, graph.name, key)
            built = backend.build(graph, settings, tmp, **with_weights)
            for path in built:
                if not Path(path).resolve().is_relative_to(tmp.resolve()):
                    raise RuntimeError(f"backend {backend.name} wrote {path} outside its artifact folder")
            seconds = time.perf_counter() - t0
            files = {str(Path(final.name) / p.relative_to(tmp)): sha for p, sha in
                     ((p, sha256_file(p)) for p in sorted(tmp.rglob("*")) if p.is_file())}
            record = ArtifactRecord(graph.name, key, {f"artifacts/{k}": v for k, v in files.items()},
                                    [t.to_dict() for t in graph.inputs], [t.to_dict() for t in graph.outputs],
                                    build_seconds=seconds, shared=shared.files_of(graph.name) if shared else [])
            if request.validate:
                loaded = backend.load(graph, settings, sorted(tmp.rglob("*")), **with_weights)
                record.validation = validate(graph, loaded, reference, request.precision).as_dict()
                if not backend.writes_artifacts:
                    record.build_seconds = time.perf_counter() - t0  # JIT: compile happens on the first call
            _write_record(tmp, record)
            commit(tmp, final)
            status = "built"
        records[graph.name] = record
        size = sum((out / f).stat().st_size for f in record.files)
        reports.append(GraphReport(graph.name, status, size, record.build_seconds, record.validation))

    corrections = None
    if plan.corrected:
        target = out / "corrections.safetensors"
        write_corrections(plan, reference_parts, target)
        streams = streams_of(reference_parts)
        corrections = {"file": target.name, "sha256": sha256_file(target),
                       "streams": streams.to_dict() if streams is not None else None}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        ditcache_version=DITCACHE_VERSION,
        model={"name": spec.name, "config": dict(spec.config), "weights_sha256": weights.sha256,
               "weights_source": weights.source, "weights_format": weights.format, "random_weights": weights.random,
               "resolution": request.resolution,  # None: the model's own size (Wan's is not square)
               "frames": request.frames},  # video models; None: the model's own
        schedule=plan.schedule,
        schedule_hash=artifact_key(plan.schedule),
        plan=plan.to_dict(),
        plan_hash=plan.hash(),
        granularity=granularity,
        batch={"images": request.batch_size, "cfg": request.guidance, "model_batch": model_batch},
        backend={"name": backend.name, "settings": settings.to_dict(), "versions": versions},
        variants=_variant_graphs(plan, granularity, graphs),
        artifacts=records,
        corrections=corrections,
        weights=shared.layout(out, records) if shared else None,
    )
    keep = {artifact_dir(out, r.graph, r.key).name for r in records.values()}
    removed = remove_stale(out, keep) + remove_stale_weights(out, manifest.weights)
    manifest.write(out)
    return ExportReport(out, manifest, reports, removed, time.perf_counter() - start)


def write_corrections(plan: Plan, parts, target: Path) -> None:
    """The plan's scale/shift file, checked against the model, as the directory's copy: in the model's layout (an
    older per-channel file of a [text; image] model broadcast to its streams), its metadata saying so."""
    from safetensors.torch import save_file

    streams = streams_of(parts)
    checked = load_corrections(plan.corrections, plan, range_correction_shapes(parts, plan), streams)
    _, metadata = read_corrections(plan.corrections)
    with atomic_path(target) as tmp:
        save_file({k: v.contiguous() for k, v in checked.items()}, str(tmp),
                  metadata={**metadata, **layout_metadata(streams)})


def _variant_graphs(plan: Plan, granularity: str, graphs: list[GraphSpec]) -> dict[str, list[str]]:
    if is_adaptive(plan):  # the three programs, each one graph
        return {p: [f"adaptive.{p}"] for p in plan.programs}
    if granularity == "variant":
        return {v.name: [f"variant.{v.name}"] for v in plan.variants}
    names = [g.name for g in graphs]
    return {v.name: names for v in plan.variants}


_RECORD = "artifact.json"


def _write_record(folder: Path, record: ArtifactRecord) -> None:
    import json
    from dataclasses import asdict

    (folder / _RECORD).write_text(json.dumps(asdict(record), indent=2, sort_keys=True))


def _previous_record(folder: Path, root: Path) -> ArtifactRecord | None:
    """The record of a finished artifact folder whose files still verify, else None (rebuild)."""
    import json

    path = folder / _RECORD
    if not path.is_file():
        return None
    try:
        record = ArtifactRecord(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None
    return record if verify(root, record.files) is None else None
