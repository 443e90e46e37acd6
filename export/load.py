"""Load an engine directory: check it against the request, load every graph, hand a Dispatcher over."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ditcache.compiler.backend import BuildSettings, GraphSpec, TensorSpec, get_backend, require
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.shared_weights import WEIGHTS_FOLDER, SharedWeights
from ditcache.compiler.graph_specs import plan_graphs
from ditcache.graphs import parts_for
from ditcache.graphs.adaptive import plan_from_dict
from ditcache.graphs.plan import Plan
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import ModelSpec, at_resolution, get_spec
from ditcache.graphs.schedule import Schedule
from ditcache.graphs.streams import Streams
from ditcache.graphs.variants import build_segments
from ditcache.graphs.weights import load_model

from .manifest import Manifest, ManifestError
from .store import verify
from .weights import read_model_weights


@dataclass
class LoadedEngines:
    """An engine directory, checked and loaded: sample with ``dispatcher``."""

    directory: Path
    manifest: Manifest
    spec: ModelSpec
    plan: Plan
    dispatcher: Dispatcher


def check_request(manifest: Manifest, *, schedule: Schedule | None = None, images: int | None = None,
                  guidance: bool | None = None, precision: str | None = None, weights_sha256: str | None = None,
                  backend: str | None = None) -> None:
    """Raise ManifestError naming the first field of the request that the directory was not built for.

    ``images`` is never refused for its count: the dispatcher runs any batch in chunks of the engines' own
    (compiler.runtime.chunking); only a count below 1 is.
    """
    m = manifest
    checks: list[tuple[str, Any, Any, str]] = []
    if schedule is not None:
        spec = at_resolution(get_spec(m.model["name"]), m.model["resolution"], m.model.get("frames"))
        asked = json.loads(json.dumps(plan_for(schedule, spec).schedule, sort_keys=True))  # refuses a misfit too
        built = m.schedule
        if asked != built:
            keys = sorted(k for k in set(asked) | set(built) if asked.get(k) != built.get(k))
            detail = ", ".join(f"{k}: built {built.get(k)!r}, asked {asked.get(k)!r}" for k in keys)
            raise ManifestError(f"engine directory was built for another schedule ({detail}); "
                                f"export again with this --schedule")
    if images is not None and images < 1:
        raise ManifestError(f"a request samples at least 1 image (got {images})")
    if guidance is not None:
        checks.append(("classifier-free guidance", guidance, m.batch["cfg"],
                       "export with matching guidance (the model batch differs)"))
    if precision is not None:
        checks.append(("precision", precision, m.backend["settings"]["precision"], "export with that --precision"))
    if weights_sha256 is not None:
        checks.append(("weights sha256", weights_sha256, m.model["weights_sha256"], "export with these weights"))
    if backend is not None:
        checks.append(("backend", backend, m.backend["name"], "export with that --backend"))
    for what, asked, built, fix in checks:
        if asked != built:
            raise ManifestError(f"engine directory was built for {what} {built!r}, the request has {asked!r}: {fix}")


def _check_integrity(directory: Path, manifest: Manifest) -> Plan:
    plan = plan_from_dict(manifest.plan)  # a Plan, or an adaptive plan's programs and policy
    if plan.hash() != manifest.plan_hash:
        raise ManifestError(f"{directory}: the manifest's plan does not match its hash (edited?); re-run export-engines")
    for name in {g for graphs in manifest.variants.values() for g in graphs}:
        if name not in manifest.artifacts:
            raise ManifestError(f"{directory}: variant graph {name} has no artifact record; re-run export-engines")
    for record in manifest.artifacts.values():
        problem = verify(directory, record.files)
        if problem:
            raise ManifestError(f"{directory}: artifact {record.graph}: {problem}; re-run export-engines to rebuild it")
    if manifest.corrections:
        problem = verify(directory, {manifest.corrections["file"]: manifest.corrections["sha256"]})
        if problem:
            raise ManifestError(f"{directory}: corrections: {problem}; re-run export-engines")
    if manifest.weights is not None:  # once for the directory, however many graphs reference them
        problem = verify(directory, manifest.weights.files)
        if problem:
            raise ManifestError(f"{directory}: shared weights: {problem}; re-run export-engines")
    for record in manifest.artifacts.values():
        unknown = [f for f in record.shared if manifest.weights is None or f not in manifest.weights.files]
        if unknown:
            raise ManifestError(f"{directory}: artifact {record.graph} references shared weights {unknown} that the "
                                f"manifest does not record; re-run export-engines")
    return plan


def _check_versions(backend, manifest: Manifest) -> None:
    now = backend.versions()
    built = manifest.backend["versions"]
    for lib in sorted(set(now) | set(built)):
        if now.get(lib) != built.get(lib):
            raise ManifestError(
                f"engines were built with {lib} {built.get(lib)!r}, this machine has {now.get(lib)!r}; "
                f"re-run export-engines here"
            )


def _graphs_from_manifest(manifest: Manifest) -> dict[str, GraphSpec]:
    def specs(items):
        return tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"]) for t in items)

    return {name: GraphSpec(name, None, specs(r.inputs), specs(r.outputs)) for name, r in manifest.artifacts.items()}


def load_engines(directory: str | Path, *, weights: str | None = None, device: str | None = None,
                 **request: Any) -> LoadedEngines:
    """Check and load an engine directory.

    Args:
        directory: written by ``export-engines``.
        weights: model weights; needed by backends that compile from the model (eager, inductor) when the
            directory's weights source is not available, and checked against the recorded sha256.
        device: override the recorded device.
        request: fields checked by :func:`check_request` (schedule, images, guidance, precision, backend).
    """
    directory = Path(directory)
    manifest = Manifest.read(directory)
    backend = get_backend(manifest.backend["name"])
    recorded = manifest.backend["settings"]
    settings = BuildSettings(recorded["precision"], device or recorded["device"], recorded["options"])
    require(backend, settings)
    _check_versions(backend, manifest)
    check_request(manifest, **request)
    plan = _check_integrity(directory, manifest)
    if manifest.corrections:  # the plan names the directory's copy of its scale/shift file
        plan = replace(plan, corrections=directory / manifest.corrections["file"])
    spec = at_resolution(get_spec(manifest.model["name"]), manifest.model["resolution"], manifest.model.get("frames"))
    graphs = _graphs_from_manifest(manifest)
    parts = None
    if not backend.writes_artifacts:
        parts, graphs = _graphs_from_model(manifest, spec, plan, settings, weights)
    shared = _shared_weights(directory, manifest, settings)
    with_weights = {} if shared is None else {"weights": shared}  # one copy of the weights for every graph
    flats = {name: backend.load(graph, settings, [directory / f for f in manifest.artifacts[name].files],
                                **with_weights)
             for name, graph in graphs.items()}
    segments = None
    if manifest.granularity == "segment":
        segments = build_segments(parts, plan) if parts is not None else _segment_stubs(plan, graphs)
    recorded_streams = (manifest.corrections or {}).get("streams")  # the host's per-stream expansion (segments)
    dispatcher = build_dispatcher(plan, parts=parts, flats=flats, graphs=graphs, granularity=manifest.granularity,
                                  segments=segments, batch=manifest.batch["model_batch"],
                                  streams=Streams.from_dict(recorded_streams) if recorded_streams else None)
    return LoadedEngines(directory, manifest, spec, plan, dispatcher)


def _shared_weights(directory: Path, manifest: Manifest, settings: BuildSettings) -> SharedWeights | None:
    """The directory's shared weights (verified with the rest), read at most once, when a graph first asks."""
    layout = manifest.weights
    if layout is None:
        return None
    source = None
    if layout.model_file is not None:
        source = lambda: read_model_weights(directory, layout.model_file, settings.device)  # noqa: E731
    return SharedWeights(layout.precision, settings.device, source=source, folder=directory / WEIGHTS_FOLDER)


def _graphs_from_model(manifest: Manifest, spec: ModelSpec, plan: Plan, settings: BuildSettings, weights: str | None):
    source = weights
    if source is None and not manifest.model["random_weights"]:
        source = manifest.model["weights_source"]
        if not Path(source).exists():
            raise ManifestError(f"the {manifest.backend['name']} backend compiles from the model, and its weights "
                                f"{source!r} are gone; pass --weights")
    if manifest.model["random_weights"]:
        model, info = load_model(spec, random_weights=True, seed=int(manifest.model["weights_sha256"].rsplit("-", 1)[1]))
    else:
        model, info = load_model(spec, source)
    if info.sha256 != manifest.model["weights_sha256"]:
        raise ManifestError(f"weights {info.source} (sha256 {info.sha256[:12]}) are not the ones the engines were "
                            f"built from ({manifest.model['weights_sha256'][:12]}); pass the right --weights")
    if settings.device != "cpu" or settings.dtype != torch.float32:
        model = model.to(torch.device(settings.device), settings.dtype)
    model = model.eval()
    parts = parts_for(model, spec)
    built = plan_graphs(parts, plan, manifest.granularity, manifest.batch["model_batch"], settings.dtype)
    graphs = {g.name: g for g in built}
    for name, graph in graphs.items():
        record = manifest.artifacts.get(name)
        if record is None or record.inputs != [t.to_dict() for t in graph.inputs]:
            raise ManifestError(f"graph {name} no longer matches the manifest; re-run export-engines")
    return parts, graphs


class _SegmentStub:
    def __init__(self, name: str, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        self.name, self.inputs, self.outputs = name, inputs, outputs


def _segment_stubs(plan: Plan, graphs: dict[str, GraphSpec]) -> dict[str, _SegmentStub]:
    """Every segment graph of the directory (head, links, block segments, tail) as the interpreter sees it."""
    stubs = {}
    for name, graph in graphs.items():
        if name.startswith("segment."):
            n = name.removeprefix("segment.")
            stubs[n] = _SegmentStub(n, graph.input_names,
                                    tuple(_value_name(o, graph.input_names) for o in graph.output_names))
    return stubs


def _value_name(output: str, inputs: tuple[str, ...]) -> str:
    """The environment name of a segment graph's output (graph names of outputs that share an input's name end
    in ``_out``, see compiler.graph_specs.segment_graph)."""
    base = output.removesuffix("_out")
    return base if output.endswith("_out") and base in inputs else output

