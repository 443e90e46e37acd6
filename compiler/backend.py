"""The one small interface every backend implements, and what it compiles: a GraphSpec."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from ditcache.graphs.dtypes import PRECISION_DTYPES, dtype_name, precision_dtype

PRECISIONS = tuple(PRECISION_DTYPES)
GRANULARITIES = ("variant", "segment")

# flat callable: positional tensors in GraphSpec.input_names order -> tuple in output_names order
FlatFn = Callable[..., tuple[torch.Tensor, ...]]


class BackendUnavailable(RuntimeError):
    """A backend whose libraries or hardware are missing; the message says what to install."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, static shape and dtype of one graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        return cls(name, tuple(tensor.shape), dtype_name(tensor.dtype))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class GraphSpec:
    """One graph to compile: a whole variant (variant granularity) or one segment (segment granularity).

    Args:
        name: artifact name, unique in an engine directory (``variant.full``, ``segment.blocks.0-8``).
        module: flat-signature module (None when only loading a prebuilt artifact).
        inputs, outputs: names, static shapes (batch counts the CFG doubling) and dtypes.
        example_inputs: tensors of those shapes, for tracing and validation.
        weight_names: every name under which ``module`` reaches a model tensor -> the model's FQN of it (the key
            of the directory's shared weights file; see compiler.shared_weights).
    """

    name: str
    module: nn.Module | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    example_inputs: tuple[torch.Tensor, ...] = field(default=(), repr=False)
    weight_names: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def signature(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class BuildSettings:
    """What a backend needs to know besides the graph.

    Args:
        precision: ``fp32``, ``fp16`` or ``bf16`` (weights and activations; caches keep this dtype).
        device: ``cpu`` or ``cuda``.
        options: backend-specific settings that change the artifact (they enter its cache key).
    """

    precision: str = "fp32"
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        return precision_dtype(self.precision)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "device": self.device, "options": dict(sorted(self.options.items()))}


class Backend(Protocol):
    """A way to run graphs. Backends with on-disk artifacts write them in :meth:`build`.

    Optional attributes: ``runtime_options`` (option names that only matter at load: kept out of artifact keys) and
    ``shared_weights`` (None, or ``"model"``: the graphs keep no weights of their own; export writes the model's
    tensors once to the directory's weights file and ``build``/``load`` get a ``weights=SharedWeights`` keyword,
    ``"own"``: likewise, and the backend also writes its own shared file(s) into ``weights.folder``; or a method
    of the BuildSettings answering one of those, where options decide it).
    """

    name: str
    writes_artifacts: bool

    def unavailable_reason(self, settings: BuildSettings) -> str | None:
        """None when usable with these settings, else what is missing and how to get it."""

    def versions(self) -> dict[str, str]:
        """Library versions that an artifact depends on (checked when loading)."""

    def build(self, graph: GraphSpec, settings: BuildSettings, directory: Path) -> list[Path]:
        """Compile ``graph``; write artifact files into ``directory`` and return them (none for JIT backends).
        Backends with ``shared_weights`` also take ``weights=``."""

    def load(self, graph: GraphSpec, settings: BuildSettings, files: Sequence[Path]) -> FlatFn:
        """A callable running the graph (from the files, or from ``graph.module`` for JIT backends).
        Backends with ``shared_weights`` also take ``weights=`` (one object for all graphs of a directory)."""


# name -> "module:Class" inside ditcache.compiler, imported only when asked for
_BUILTIN = {
    "eager": "backends.eager:EagerBackend",
    "inductor": "backends.inductor_aot:InductorAOTBackend",
    "inductor-jit": "backends.inductor:InductorJITBackend",
    "onnxruntime": "backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "backends.tensorrt:TensorRTBackend",
}
_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Add a backend (third-party backends register here)."""
    _BACKENDS[name] = factory


def backend_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*_BUILTIN, *_BACKENDS]))


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the choices for an unknown one."""
    if name in _BACKENDS:
        return _BACKENDS[name]()
    if name not in _BUILTIN:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(backend_names())}")
    import importlib

    module, cls = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(f"ditcache.compiler.{module}"), cls)()


def require(backend: Backend, settings: BuildSettings) -> None:
    """Raise BackendUnavailable with the reason when ``backend`` cannot run ``settings``."""
    reason = backend.unavailable_reason(settings)
    if reason:
        raise BackendUnavailable(f"backend {backend.name!r} is unavailable: {reason}")
