"""The engine directory's shared weights file: the model's tensors once, in the export precision, keyed by FQN.

``weights/<precision>.safetensors`` holds every parameter and buffer of the model (cast to the export precision);
``weights/<precision>.json`` beside it records what it was written from (the model's weights sha256, the
precision, the tensor names and shapes) and the file's sha256, so that a re-export with nothing changed reuses it.
Backends whose graphs keep no weights of their own (``shared_weights`` set, e.g. the inductor backend's
AOTInductor packages) get these tensors, read once, through one SharedWeights for all graphs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ditcache.compiler.atomic import atomic_path, write_json_atomic
from ditcache.compiler.backend import BuildSettings
from ditcache.compiler.shared_weights import WEIGHTS_FOLDER, SharedWeights, model_tensors
from ditcache.graphs.dtypes import dtype_name, precision_dtype
from ditcache.graphs.weights import sha256_file

from .manifest import ArtifactRecord, WeightsLayout
from .store import artifact_key


def weights_file(precision: str) -> str:
    """The shared weights file of ``precision``, relative to the engine directory."""
    return f"{WEIGHTS_FOLDER}/{precision}.safetensors"


def write_model_weights(root: Path, model: torch.nn.Module, precision: str, weights_sha256: str) -> tuple[str, str]:
    """Write (or reuse) ``weights/<precision>.safetensors`` from ``model``; return its relative name and sha256."""
    tensors = model_tensors(model)
    identity = {"weights_sha256": weights_sha256, "precision": precision,
                "tensors": {k: [list(v.shape), dtype_name(v.dtype)] for k, v in sorted(tensors.items())}}
    key = artifact_key(identity)
    rel = weights_file(precision)
    path = Path(root) / rel
    record = path.with_suffix(".json")
    previous = _read_record(record)
    if previous.get("key") == key and path.is_file() and sha256_file(path) == previous.get("sha256"):
        return rel, previous["sha256"]
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(_unshared(tensors), str(tmp), metadata={"precision": precision, "weights_sha256": weights_sha256})
    digest = sha256_file(path)
    write_json_atomic(record, {"key": key, "sha256": digest, "precision": precision}, sort_keys=True)
    return rel, digest


def read_model_weights(root: Path, rel: str, device: str) -> dict[str, torch.Tensor]:
    """The tensors of a shared weights file (checked by the caller), on ``device``."""
    from safetensors.torch import load_file

    return load_file(str(Path(root) / rel), device=device)


def _unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors that share no memory (safetensors refuses aliases: a tied or viewed tensor is
    copied)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        if t.numel() and t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger storage: store only its own elements
        out[name] = t
    return out


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class ExportWeights:
    """The shared weights of one export: what every graph's build and validation gets, and what the manifest
    records at the end."""

    shared: SharedWeights
    kind: str  # model | own (see manifest.WeightsLayout)
    model_file: str | None = None
    model_sha256: str | None = None

    def files_of(self, graph: str) -> list[str]:
        """The shared files ``graph`` references, relative to the engine directory."""
        own = sorted(f"{WEIGHTS_FOLDER}/{name}" for name in self.shared.uses.get(graph, ()))
        return ([self.model_file] if self.model_file else []) + own

    def layout(self, root: Path, records: Mapping[str, ArtifactRecord]) -> WeightsLayout:
        """The manifest's record of the shared files the graphs reference (each checksummed once)."""
        files: dict[str, str] = {}
        graphs = []
        for name, record in sorted(records.items()):
            if record.shared:
                graphs.append(name)
            for rel in record.shared:
                if rel not in files:
                    files[rel] = self.model_sha256 if rel == self.model_file else sha256_file(Path(root) / rel)
        size = sum((Path(root) / rel).stat().st_size for rel in files)
        return WeightsLayout(self.kind, self.shared.precision, dtype_name(precision_dtype(self.shared.precision)),
                             files, self.model_file, size, graphs)


def shared_weights_kind(backend: Any, settings: BuildSettings) -> str | None:
    """``model``, ``own`` or None: the backend's ``shared_weights`` attribute (or its answer for ``settings``)."""
    kind = getattr(backend, "shared_weights", None)
    return kind(settings) if callable(kind) else kind


def export_weights(backend: Any, root: Path, model: torch.nn.Module, settings: BuildSettings,
                   weights_sha256: str) -> ExportWeights | None:
    """The shared weights of an export to ``root`` with ``backend`` (None where its graphs keep their own): the
    model's tensors, written once to ``weights/<precision>.safetensors`` for ``model``-kind backends."""
    kind = shared_weights_kind(backend, settings)
    precision, device = settings.precision, settings.device
    if kind is None:
        return None
    if kind not in ("model", "own"):
        raise ValueError(f"backend {backend.name!r} declares shared_weights={kind!r}; known: model, own")
    shared = SharedWeights(precision, device, source=model_tensors(model), folder=Path(root) / WEIGHTS_FOLDER)
    if kind == "own":
        return ExportWeights(shared, kind)
    rel, digest = write_model_weights(root, model, precision, weights_sha256)
    return ExportWeights(shared, kind, rel, digest)


def missing_shared(root: Path, record: ArtifactRecord) -> str | None:
    """The first shared file a finished artifact references that is gone, or None."""
    for rel in record.shared:
        if not (Path(root) / rel).is_file():
            return rel
    return None


def remove_stale_weights(root: Path, layout: WeightsLayout | None) -> list[str]:
    """Delete files under ``weights/`` that the manifest does not reference (their ``.json`` records kept beside
    the files it does); returns their relative names."""
    folder = Path(root) / WEIGHTS_FOLDER
    if not folder.is_dir():
        return []
    keep = set(layout.files) if layout is not None else set()
    keep |= {str(Path(rel).with_suffix(".json")) for rel in keep if rel.endswith(".safetensors")}
    removed = []
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        rel = str(path.relative_to(root))
        if path.is_file() and rel not in keep:
            path.unlink()
            removed.append(rel)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed
