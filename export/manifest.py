"""The engine directory's manifest: everything needed to check that artifacts fit a request."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ditcache.compiler.atomic import write_atomic

FORMAT_VERSION = 2  # 2: shared weights (``weights``), ``inductor`` names the AOTInductor backend (was the JIT)
MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """An engine directory that is missing, half-written, corrupted, or does not fit the request."""


@dataclass
class ArtifactRecord:
    """One compiled graph: its key, files (relative path -> sha256), signature, and the shared weight files it
    references (relative to the engine directory; checked once for all graphs, see :class:`WeightsLayout`)."""

    graph: str
    key: str
    files: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    build_seconds: float = 0.0
    validation: dict[str, float] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)


@dataclass
class WeightsLayout:
    """Where the graphs' weights live: once per engine directory, shared by every graph that names a file.

    Args:
        kind: ``model`` (the model's tensors by FQN in ``weights/<precision>.safetensors``; the graphs' constants
            map onto them) or ``own`` (the backend's own shared files, e.g. ONNX external data, one file per
            distinct initializer, referenced by every ONNX graph that uses it).
        precision, dtype: the export precision and the tensors' dtype name.
        files: relative path -> sha256 of every shared file.
        model_file: the model weights file (``kind == "model"``), read once at load.
        bytes: their total size on disk.
        graphs: the graphs that reference them.
    """

    kind: str
    precision: str
    dtype: str
    files: dict[str, str]
    model_file: str | None = None
    bytes: int = 0
    graphs: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    """What ``export-engines`` wrote (docs/engines.md lists the fields)."""

    format_version: int
    ditcache_version: str
    model: dict[str, Any]  # name, config, weights_sha256, weights_source, resolution
    schedule: dict[str, Any]  # normalized schedule
    schedule_hash: str
    plan: dict[str, Any]  # Plan.to_dict()
    plan_hash: str
    granularity: str
    batch: dict[str, Any]  # images, cfg, model_batch
    backend: dict[str, Any]  # name, settings, versions
    variants: dict[str, list[str]]  # variant -> graphs it runs (one, or the segment chain)
    artifacts: dict[str, ArtifactRecord]
    # corrected plans: {"file": relative path, "sha256": ..., "streams": the hidden state's token streams
    # ({"names", "tokens"}) when the scale/shift has a row per stream, else None (graphs/streams.py)}
    corrections: dict[str, Any] | None = None
    weights: WeightsLayout | None = None  # shared weights (backends whose graphs keep none of their own)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def write(self, directory: Path) -> None:
        """Write atomically: the manifest appears only when complete."""
        write_atomic(Path(directory) / MANIFEST_NAME, self.to_json())

    @classmethod
    def read(cls, directory: Path) -> "Manifest":
        path = Path(directory) / MANIFEST_NAME
        if not Path(directory).is_dir():
            raise ManifestError(f"engine directory {str(directory)!r} does not exist; run export-engines first")
        if not path.is_file():
            raise ManifestError(
                f"{directory} has no {MANIFEST_NAME}: the export did not finish (or this is not an engine "
                f"directory); run export-engines again with the same arguments to resume"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-run export-engines") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{path} has format version {data.get('format_version')}, this ditcache reads {FORMAT_VERSION}; "
                f"re-run export-engines with this version"
            )
        try:
            data["artifacts"] = {k: ArtifactRecord(**v) for k, v in data["artifacts"].items()}
            if data.get("weights") is not None:
                data["weights"] = WeightsLayout(**data["weights"])
            return cls(**data)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ManifestError(f"{path} is malformed ({exc}); re-run export-engines") from None
