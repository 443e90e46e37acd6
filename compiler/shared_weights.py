"""Weights once per engine directory: the one copy of the model's tensors that every graph references, how a
graph's own names for them map to the model's, and the per-graph record of that map (``<graph>.weights.json``).

Backends that keep their weights out of their artifacts (inductor's AOTInductor packages, TensorRT's refittable
engines) record, per graph, which of the model's tensors each of their constants is; at load they take those
tensors from one :class:`SharedWeights` (read once from the directory's weights file), so all variant graphs of a
directory reference the same memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ditcache.graphs.dtypes import dtype_name

from ditcache.compiler.atomic import write_atomic

WEIGHTS_FOLDER = "weights"  # inside an engine directory
WEIGHT_MAP_SUFFIX = ".weights.json"
EXTRA_SUFFIX = ".extra.safetensors"  # a graph's constants that are not model tensors (rare: lifted constants)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers (non-persistent ones included) by canonical FQN, each tensor once."""
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        tensors.setdefault(name, tensor.detach())
    return tensors


def weight_names(module: nn.Module, model: nn.Module | None) -> dict[str, str]:
    """Every name under which ``module`` reaches one of ``model``'s tensors (aliases included) -> the model's FQN.

    Graph modules are built from the model's submodules (segments, variant wrappers), so a tensor has another
    FQN in the graph than in the model; the identity of the tensor object links the two.
    """
    if model is None:
        return {}
    canonical = {id(t): name for name, t in (*model.named_parameters(), *model.named_buffers())}
    names = {}
    for name, tensor in (*module.named_parameters(remove_duplicate=False),
                         *module.named_buffers(remove_duplicate=False)):
        key = canonical.get(id(tensor))
        if key is not None:
            names[name] = key
    return names


@dataclass(frozen=True)
class WeightEntry:
    """One constant of a compiled graph: the shared tensor it is (``key``), or None where the graph keeps its own."""

    key: str | None
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "shape": list(self.shape), "dtype": self.dtype}


def entry_of(key: str | None, tensor: torch.Tensor) -> WeightEntry:
    return WeightEntry(key, tuple(tensor.shape), dtype_name(tensor.dtype))


def write_weight_map(path: Path, graph: str, entries: Mapping[str, WeightEntry]) -> Path:
    """``<graph>.weights.json``: the graph's constant name -> shared key, shape, dtype."""
    data = {"graph": graph, "constants": {name: e.to_dict() for name, e in sorted(entries.items())}}
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_weight_map(path: Path) -> dict[str, WeightEntry]:
    try:
        data = json.loads(Path(path).read_text())
        return {name: WeightEntry(e["key"], tuple(e["shape"]), e["dtype"]) for name, e in data["constants"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the weight map {path} ({type(exc).__name__}: {exc}); export again") from None


@dataclass
class SharedWeights:
    """The engine directory's one copy of the weights, handed to every graph's ``build`` and ``load``.

    Args:
        precision: the export precision (the tensors' dtype).
        device: where the graphs run; tensors are handed over there.
        source: the model's tensors by FQN (export: the model being exported), or a callable reading them (load:
            from the directory's weights file, called once, on first use).
        folder: ``<engine dir>/weights``: where shared files live; backends with shared files of their own write
            them here at export (and read them from here at load).
        uses: graph name -> the shared files it references (relative to ``folder``), filled at export by
            :meth:`use`.
        handles: what a backend derives once from the shared data for all its graphs (ONNX Runtime: OrtValues).
    """

    precision: str
    device: str = "cpu"
    source: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]] | None = None
    folder: Path | None = None
    uses: dict[str, set[str]] = field(default_factory=dict)
    handles: dict[str, Any] = field(default_factory=dict)
    _tensors: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)

    def use(self, graph: str, name: str) -> None:
        """Record that ``graph`` references the shared file ``name`` (relative to :attr:`folder`)."""
        self.uses.setdefault(graph, set()).add(name)

    @property
    def tensors(self) -> Mapping[str, torch.Tensor]:
        """The shared tensors by model FQN, read once."""
        if self._tensors is None:
            if self.source is None:
                raise ValueError("these engines keep their weights in the directory's weights file, and none was "
                                 "given; load the directory with export.load.load_engines")
            tensors = self.source() if callable(self.source) else self.source
            device = torch.device(self.device)
            self._tensors = {k: v if v.device == device else v.to(device) for k, v in tensors.items()}
        return self._tensors

    def resolve(self, graph: str, entries: Mapping[str, WeightEntry], wanted: list[str],
                extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The tensor of every constant name in ``wanted`` (what a compiled graph asks for), checked against its
        record: a name the record lacks, a missing shared tensor, or a shape or dtype that differs is refused with
        a clear error (passing an incomplete map to a loader can crash the process instead of raising)."""
        unknown = [n for n in wanted if n not in entries]
        if unknown:
            raise ValueError(f"{graph}: the compiled graph needs constants {_few(unknown)} that its weight map does "
                             f"not record (a foreign or stale artifact); export again")
        tensors = self.tensors if any(entries[n].key is not None for n in wanted) else {}
        out = {}
        for name in wanted:
            entry = entries[name]
            if entry.key is None:
                tensor = (extra or {}).get(name)
                where = f"the graph's own constants ({EXTRA_SUFFIX})"
            else:
                tensor = tensors.get(entry.key)
                where = f"the shared weights (key {entry.key!r})"
            if tensor is None:
                raise ValueError(f"{graph}: constant {name!r} is missing from {where}; export again")
            got = (tuple(tensor.shape), dtype_name(tensor.dtype))
            if got != (entry.shape, entry.dtype):
                raise ValueError(f"{graph}: constant {name!r} is {got[1]}{list(got[0])} in {where} but the graph was "
                                 f"compiled for {entry.dtype}{list(entry.shape)}; export again")
            out[name] = tensor
        return out


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
