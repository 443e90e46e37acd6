"""The TensorRT backend: one serialized engine per graph, run from torch CUDA tensors.

Two routes from the same GraphSpecs (``options["route"]``):

* ``onnx`` (default): the onnxruntime backend exports ``<graph.name>.onnx`` (static shapes, the GraphSpec's
  names), polygraphy parses it and builds ``<graph.name>.engine`` with one static optimization profile
  (min = opt = max = the GraphSpec shape; the batch already counts the CFG doubling). Loaded with the
  TensorRT runtime: every engine of one backend instance shares ONE scratch allocation (contexts are created
  with ``ExecutionContextAllocationStrategy.USER_MANAGED``) and one CUDA stream; optionally each engine is
  captured once as a CUDA graph.
* ``dynamo``: ``torch_tensorrt.dynamo.compile`` of ``torch.export.export(graph.module, example_inputs)``,
  saved with ``torch_tensorrt.save(..., output_format="exported_program")`` as ``<graph.name>.ep`` and
  loaded with ``torch.export.load``.

Precision: the graph's module and inputs already carry the precision (the exporter casts the model), so
networks are built strongly typed: TensorRT keeps the ONNX/torch dtypes. TensorRT 11 only builds strongly
typed networks (its BuilderFlag has no FP16/BF16 any more); ``strongly_typed=False`` (TensorRT 10 only)
builds weakly typed with the FP16/BF16 builder flag of the precision instead.

Each build also writes ``<graph.name>.trt.json``: the TensorRT version and GPU compute capability the engine
was built for; :meth:`TensorRTBackend.load` refuses an engine when they differ from this machine
(:func:`engine_compatibility`). Every file is written to a temporary name and moved into place.

Options (``BuildSettings.options``):
    route: ``onnx`` | ``dynamo`` (default ``onnx``).
    cuda_graph: capture each engine's execution as a CUDA graph on first call (``onnx`` route only).
    timing_cache: path of the tactic timing cache (default ``<directory>/timing.cache``; point several builds
        at one file to share it).
    workspace_mib: cap of TensorRT's workspace memory pool, in MiB (default: TensorRT's, the GPU's memory).
    strongly_typed: default True; False builds weakly typed with precision flags (TensorRT 10 only).
    opset, external_data, optimize: passed to the ONNX export (see the onnxruntime backend).
    weight_stripped: route ``onnx``: weights once per engine directory. Engines are built weight-stripped and
        refittable (``BuilderFlag.STRIP_PLAN`` + ``BuilderFlag.REFIT_IDENTICAL``) from an ONNX export whose
        initializers keep the graph module's names (``optimize`` off: the exporter's folding would rename them);
        the artifact keeps the engine and ``<graph>.weights.json`` (each refittable weight -> the model FQN in the
        directory's ``weights/<precision>.safetensors``), not the ONNX. At load, a ``trt.Refitter`` sets every
        weight from the one SharedWeights (device tensors, ``TensorLocation.DEVICE``) after checking that none is
        missing (``get_missing_weights``), then ``refit_cuda_engine``. On disk and on the host the weights are
        stored once; on the GPU each refitted engine holds its own copy (TensorRT engines cannot share weight
        memory): segment granularity stays the way to 1x GPU memory. Written against TensorRT 10's documented
        Refitter API; unrun on this project's CPU machines (TensorRT cannot be installed there).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ditcache.graphs.dtypes import TENSOR_DTYPES

from ditcache.compiler.atomic import atomic_path, write_atomic
from ditcache.compiler.backend import BackendUnavailable, BuildSettings, FlatFn, GraphSpec, TensorSpec, require
from ditcache.compiler.shared_weights import (
    EXTRA_SUFFIX,
    WEIGHT_MAP_SUFFIX,
    SharedWeights,
    WeightEntry,
    entry_of,
    read_weight_map,
    write_weight_map,
)

ROUTES = ("onnx", "dynamo")
DEFAULT_ROUTE = "onnx"
TIMING_CACHE_NAME = "timing.cache"
MIN_TENSORRT_MAJOR = 10
EXPORT_OPTIONS = ("opset", "external_data", "optimize")  # handed to the ONNX export
KNOWN_OPTIONS = ("route", "cuda_graph", "timing_cache", "workspace_mib", "strongly_typed", "weight_stripped",
                 *EXPORT_OPTIONS)
INSTALL_HINT = ("pip install ditcache[tensorrt] on a machine with an NVIDIA GPU and access to NVIDIA's package "
                "index (TensorRT cannot be installed on CPU-only machines)")
# fields of an engine record that must equal this machine's for the engine to run
RECORD_FIELDS = {"tensorrt": "TensorRT version", "compute_capability": "GPU compute capability",
                 "torch_tensorrt": "torch_tensorrt version", "torch": "torch version"}
REQUIRED_FIELDS = ("tensorrt", "compute_capability")


class EngineIncompatible(RuntimeError):
    """A serialized engine built for another TensorRT version or GPU architecture."""


@dataclass(frozen=True)
class TensorRTOptions:
    """The backend's options, checked (see the module docstring)."""

    route: str = DEFAULT_ROUTE
    cuda_graph: bool = False
    timing_cache: str | None = None
    workspace_mib: int | None = None
    strongly_typed: bool = True
    export: tuple[tuple[str, Any], ...] = ()
    weight_stripped: bool = False

    @classmethod
    def of(cls, settings: BuildSettings) -> "TensorRTOptions":
        """Parse ``settings.options``; ValueError naming the bad option and its choices."""
        options = dict(settings.options)
        unknown = sorted(set(options) - set(KNOWN_OPTIONS))
        if unknown:
            raise ValueError(f"unknown tensorrt option(s) {unknown}; known: {', '.join(KNOWN_OPTIONS)}")
        route = options.get("route", DEFAULT_ROUTE)
        if route not in ROUTES:
            raise ValueError(f"tensorrt route must be one of {', '.join(ROUTES)} (got {route!r})")
        for flag in ("cuda_graph", "strongly_typed", "weight_stripped"):
            if flag in options and not isinstance(options[flag], bool):
                raise ValueError(f"tensorrt option {flag} must be true or false (got {options[flag]!r})")
        cuda_graph = options.get("cuda_graph", False)
        if cuda_graph and route != "onnx":
            raise ValueError("cuda_graph is for route=onnx (engines run by this backend); the dynamo route runs "
                             "torch_tensorrt's own runtime: capture it at the dispatcher instead")
        workspace = options.get("workspace_mib")
        if workspace is not None and (isinstance(workspace, bool) or not isinstance(workspace, int) or workspace < 1):
            raise ValueError(f"workspace_mib must be a positive integer (got {workspace!r})")
        stripped = options.get("weight_stripped", False)
        if stripped and route != "onnx":
            raise ValueError("weight_stripped is for route=onnx (engines refitted by this backend)")
        if stripped and options.get("optimize"):
            raise ValueError("weight_stripped exports the ONNX with optimize=false (the optimizer's constant folding "
                             "renames weights, which then cannot be refitted from the model's): drop optimize")
        cache = options.get("timing_cache")
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(f"timing_cache must be a path (got {cache!r})")
        export = {k: options[k] for k in EXPORT_OPTIONS if k in options}
        if stripped:
            export["optimize"] = False
        return cls(route, cuda_graph, None if cache is None else os.fspath(cache), workspace,
                   options.get("strongly_typed", True), tuple(sorted(export.items())), stripped)


# ---- availability and versions -------------------------------------------------------------------------------
def _import_problem(route: str | None) -> str | None:
    """Why the libraries of ``route`` (None: TensorRT alone) do not import, or None."""
    try:
        import tensorrt as trt
    except Exception as exc:  # a missing library raises OSError/ImportError, NVIDIA's stub wheels RuntimeError
        return f"TensorRT is not installed ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        return f"TensorRT {trt.__version__} is too old: ditcache needs TensorRT >= {MIN_TENSORRT_MAJOR}; {INSTALL_HINT}"
    if route == "onnx":
        try:
            import polygraphy.backend.trt  # noqa: F401
        except Exception as exc:
            return f"TensorRT's polygraphy is not installed ({type(exc).__name__}: {exc}); {INSTALL_HINT}"
    elif route == "dynamo":
        try:
            import torch_tensorrt  # noqa: F401
        except Exception as exc:
            return (f"torch_tensorrt is not installed ({type(exc).__name__}: {exc}): the dynamo route needs it; "
                    f"pip install torch-tensorrt (the build matching your torch) besides ditcache[tensorrt], on a "
                    f"machine with an NVIDIA GPU, or use route=onnx")
    return None


def current_versions(fields: Sequence[str] = REQUIRED_FIELDS) -> dict[str, str]:
    """This machine's values of ``fields`` (TensorRT version, GPU compute capability, ...)."""
    out = {}
    for field in fields:
        if field == "tensorrt":
            import tensorrt

            out[field] = tensorrt.__version__
        elif field == "compute_capability":
            out[field] = "{}.{}".format(*torch.cuda.get_device_capability())
        elif field == "torch_tensorrt":
            import torch_tensorrt

            out[field] = torch_tensorrt.__version__
        elif field == "torch":
            out[field] = torch.__version__
    return out


def engine_compatibility(recorded: Mapping[str, Any], current: Mapping[str, Any] | None = None) -> str | None:
    """None when an engine recorded as ``recorded`` runs here, else the reason naming the field that differs.

    ``recorded`` holds ``tensorrt`` and ``compute_capability`` (and, for the dynamo route, ``torch`` and
    ``torch_tensorrt``); ``current`` defaults to this machine's (:func:`current_versions`).
    """
    fields = [f for f in RECORD_FIELDS if f in REQUIRED_FIELDS or f in recorded]
    if current is None:
        current = current_versions(fields)
    for field in fields:
        built, here = recorded.get(field), current.get(field)
        if built is None:
            return f"{field}: the engine has no record of the {RECORD_FIELDS[field]} it was built for; build it again"
        if str(built) != str(here):
            return (f"{field}: the engine was built for {RECORD_FIELDS[field]} {built}, this machine has {here}; "
                    f"TensorRT engines only run on the TensorRT version and GPU architecture they were built "
                    f"for: re-run export-engines on this machine")
    return None


def _record_path(directory: Path, graph: GraphSpec) -> Path:
    return directory / f"{graph.name}.trt.json"


def _pick(files: Sequence[Path], name: str, graph: GraphSpec) -> Path:
    found = [Path(f) for f in files if Path(f).name == name]
    if not found:
        raise FileNotFoundError(f"no {name} among the files of {graph.name}: {[str(f) for f in files]}; "
                                f"export it again")
    return found[0]


# ---- engine I/O ----------------------------------------------------------------------------------------------
def match_names(kind: str, engine_names: Sequence[str], wanted: Sequence[str], graph: str) -> list[str]:
    """The engine's tensor name for each of ``wanted`` (the names in the graph's file), in that order.

    By name when the engine has all of them, else by position when the count matches (an exporter that
    renamed differently, e.g. a segment's output ``h`` that cannot share its input's name in ONNX).
    """
    if sorted(engine_names) == sorted(wanted):
        return list(wanted)
    if len(engine_names) == len(wanted):
        return list(engine_names)
    raise ValueError(f"the engine of {graph} has {kind} {list(engine_names)}, the graph expects {list(wanted)}: a "
                     f"foreign or stale artifact; export it again")


def _file_output_names(graph: GraphSpec) -> tuple[str, ...]:
    """Output names as the ONNX export writes them (``h`` -> ``h_out`` where an input is called ``h``)."""
    from ditcache.compiler.backends import onnxruntime as onnxruntime_backend

    rename = getattr(onnxruntime_backend, "onnx_output_names", None)
    return tuple(rename(graph)) if rename is not None else graph.output_names


def _engine_io(engine: Any, graph: GraphSpec) -> tuple[list[str], list[str]]:
    import tensorrt as trt

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    ins = match_names("inputs", inputs, graph.input_names, graph.name)
    outs = match_names("outputs", outputs, _file_output_names(graph), graph.name)
    dtypes = _trt_dtypes()
    for name, spec in zip(ins + outs, graph.inputs + graph.outputs):
        dtype = dtypes.get(engine.get_tensor_dtype(name))
        shape = tuple(engine.get_tensor_shape(name))
        fits = len(shape) == len(spec.shape) and all(d in (-1, s) for d, s in zip(shape, spec.shape))
        if dtype != getattr(torch, spec.dtype) or not fits:
            raise ValueError(f"engine tensor {name} of {graph.name} is {dtype}{list(shape)}, the graph expects "
                             f"{spec.dtype}{list(spec.shape)}; export it again")
    return ins, outs


def _trt_dtypes() -> dict[Any, torch.dtype]:
    import tensorrt as trt

    return {getattr(trt, k): v for k, v in TENSOR_DTYPES.items() if hasattr(trt, k)}  # trt names them as torch


def _set_scratch(context: Any, ptr: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
        context.set_device_memory(ptr, size)
    else:
        context.device_memory = ptr


class _EngineRunner:
    """One engine as a flat callable: inputs in GraphSpec order, fresh output tensors (clones under CUDA graphs)."""

    def __init__(self, backend: "TensorRTBackend", graph: GraphSpec, context: Any, inputs: list[str],
                 outputs: list[str], device: torch.device, cuda_graph: bool):
        self.backend, self.graph, self.context, self.device = backend, graph, context, device
        self.inputs = list(zip(inputs, graph.inputs))
        self.outputs = list(zip(outputs, graph.outputs))
        self.cuda_graph = cuda_graph
        self._graph: torch.cuda.CUDAGraph | None = None
        self._generation = -1  # of the scratch buffer the captured graph points into
        with torch.cuda.device(device):  # a CUDA graph reads and writes these, its inputs are copied in
            self._static_in = [self._empty(s) for _, s in self.inputs] if cuda_graph else []
            self._static_out = [self._empty(s) for _, s in self.outputs] if cuda_graph else []

    def _empty(self, spec: TensorSpec) -> torch.Tensor:
        return torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)

    def _prepare(self, xs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        if len(xs) != len(self.inputs):
            raise TypeError(f"{self.graph.name} takes {len(self.inputs)} inputs "
                            f"{[s.name for _, s in self.inputs]}, got {len(xs)}")
        out = []
        for x, (_, spec) in zip(xs, self.inputs):
            if tuple(x.shape) != tuple(spec.shape):
                raise ValueError(f"{self.graph.name}: input {spec.name} has shape {list(x.shape)}, the engine was "
                                 f"built for {list(spec.shape)} (static shapes: export for this batch size)")
            out.append(x.detach().to(self.device, getattr(torch, spec.dtype)).contiguous())
        return out

    def _execute(self, ins: Sequence[torch.Tensor], outs: Sequence[torch.Tensor], stream: torch.cuda.Stream) -> None:
        for (name, _), t in zip(self.inputs, ins):
            self.context.set_tensor_address(name, t.data_ptr())
        for (name, _), t in zip(self.outputs, outs):
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.graph.name} failed (see the TensorRT log above)")

    def _capture(self, stream: torch.cuda.Stream) -> None:
        # one plain run first: TensorRT finishes lazy initialization outside the capture
        self._execute(self._static_in, self._static_out, stream)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._execute(self._static_in, self._static_out, stream)
        except Exception as exc:
            raise RuntimeError(f"CUDA graph capture of {self.graph.name} failed ({exc}); load without "
                               f"cuda_graph") from exc
        self._graph = graph

    @torch.no_grad()
    def __call__(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ins = self._prepare(xs)
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            stream = self.backend._stream
            ptr, size, generation = self.backend._scratch()
            if not self.cuda_graph:
                outs = [self._empty(s) for _, s in self.outputs]  # on the caller's stream: freed in its order
                stream.wait_stream(caller)
                _set_scratch(self.context, ptr, size)
                self._execute(ins, outs, stream)
                caller.wait_stream(stream)
                return tuple(outs)
            for static, x in zip(self._static_in, ins):
                static.copy_(x)
            stream.wait_stream(caller)
            if self._graph is None or generation != self._generation:
                _set_scratch(self.context, ptr, size)  # captured into the graph: capture again when it moves
                self._capture(stream)
                self._generation = generation
            with torch.cuda.stream(stream):
                self._graph.replay()
            caller.wait_stream(stream)
            # clones on the caller's stream: recorded caches must survive the next replay
            return tuple(o.clone() for o in self._static_out)


# ---- the backend ---------------------------------------------------------------------------------------------
class TensorRTBackend:
    """Serialized TensorRT engines (ONNX -> polygraphy, or torch_tensorrt dynamo); see the module docstring."""

    name = "tensorrt"
    writes_artifacts = True

    def __init__(self) -> None:
        self._runtime = None
        self._stream: torch.cuda.Stream | None = None
        self._scratch_buffer: torch.Tensor | None = None
        self._scratch_needed = 256
        self._scratch_generation = 0
        self._device: torch.device | None = None

    # ---- availability -------------------------------------------------------------------------------------
    def unavailable_reason(self, settings: BuildSettings) -> str | None:
        """None when usable; ValueError for invalid options (they are wrong on any machine)."""
        options = TensorRTOptions.of(settings)
        problem = _import_problem(options.route)
        if problem:
            return problem
        if not torch.cuda.is_available():
            return ("CUDA is not available (torch.cuda.is_available() is False): TensorRT runs only on NVIDIA GPUs; "
                    "use a machine with one and a CUDA build of torch")
        if not settings.device.startswith("cuda"):
            return f"TensorRT runs on the GPU: use --device cuda (got {settings.device!r})"
        if not options.strongly_typed:
            import tensorrt

            if int(tensorrt.__version__.split(".")[0]) >= 11:
                return (f"TensorRT {tensorrt.__version__} builds strongly typed networks only: drop "
                        f"strongly_typed=false (the graph's dtypes already carry the precision)")
        return None

    def shared_weights(self, settings: BuildSettings) -> str | None:
        """``model`` for weight-stripped engines (refitted from the directory's weights file), else None."""
        return "model" if TensorRTOptions.of(settings).weight_stripped else None

    def _check(self, settings: BuildSettings) -> TensorRTOptions:
        require(self, settings)
        return TensorRTOptions.of(settings)

    def versions(self) -> dict[str, str]:
        """TensorRT version and this GPU's compute capability: an engine runs only where both match."""
        problem = _import_problem(None)
        if problem is None and not torch.cuda.is_available():
            problem = "CUDA is not available (torch.cuda.is_available() is False)"
        if problem:
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: {problem}")
        return current_versions()

    # ---- build --------------------------------------------------------------------------------------------
    def build(self, graph: GraphSpec, settings: BuildSettings, directory: Path,
              weights: SharedWeights | None = None) -> list[Path]:
        """Write ``<graph.name>.onnx`` (+ ``.onnx.data``) and ``.engine``, or ``.ep``; plus ``.trt.json``
        (weight-stripped: the engine and its weight map, no ONNX)."""
        options = self._check(settings)
        if graph.module is None:
            raise ValueError(f"cannot build {graph.name}: the GraphSpec has no module")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cache = Path(options.timing_cache) if options.timing_cache else directory / TIMING_CACHE_NAME
        if options.route == "dynamo":
            files = self._build_dynamo(graph, settings, options, directory, cache)
            record = current_versions(("tensorrt", "compute_capability", "torch", "torch_tensorrt"))
        else:
            files = self._build_onnx(graph, settings, options, directory, cache)
            record = current_versions()
        if options.weight_stripped:
            files = self._strip(graph, files, directory, weights)
        record = {"route": options.route, "precision": settings.precision, **record}
        text = json.dumps(record, indent=2, sort_keys=True).encode()
        return [*files, write_atomic(_record_path(directory, graph), text)]

    def _export_onnx(self, graph: GraphSpec, settings: BuildSettings, options: TensorRTOptions,
                     directory: Path) -> list[Path]:
        from ditcache.compiler.backends import onnxruntime as onnxruntime_backend

        export_settings = BuildSettings(settings.precision, settings.device, dict(options.export))
        export = getattr(onnxruntime_backend, "export_onnx", None)  # a public helper, if it grows one
        try:
            if export is not None:
                files = export(graph, export_settings, directory)
            else:
                files = onnxruntime_backend.OnnxRuntimeBackend().build(graph, export_settings, directory)
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'tensorrt' is unavailable: route=onnx exports through the onnx "
                                     f"package ({exc}); pip install ditcache[onnx,tensorrt]") from exc
        return [Path(f) for f in files]

    def _build_onnx(self, graph: GraphSpec, settings: BuildSettings, options: TensorRTOptions, directory: Path,
                    cache: Path) -> list[Path]:
        import tensorrt as trt
        from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

        files = self._export_onnx(graph, settings, options, directory)
        onnx_path = _pick(files, f"{graph.name}.onnx", graph)
        profile = Profile()
        for spec in graph.inputs:
            profile.add(spec.name, min=spec.shape, opt=spec.shape, max=spec.shape)
        weak = not options.strongly_typed
        pools = None if options.workspace_mib is None else {trt.MemoryPoolType.WORKSPACE: options.workspace_mib << 20}
        cache.parent.mkdir(parents=True, exist_ok=True)
        # the cache goes in and out as open files: polygraphy then leaves no .lock files beside them, and the new
        # cache (the old entries plus this build's) replaces the old one atomically
        with atomic_path(cache) as tmp_cache, contextlib.ExitStack() as files_open:
            new_cache = files_open.enter_context(open(tmp_cache, "w+b"))
            old_cache = None
            if cache.is_file() and cache.stat().st_size:
                old_cache = files_open.enter_context(open(cache, "rb"))
            config = CreateConfig(fp16=weak and settings.precision == "fp16",
                                  bf16=weak and settings.precision == "bf16", profiles=[profile],
                                  load_timing_cache=old_cache, memory_pool_limits=pools)
            if options.weight_stripped:
                config = _stripped_config(config)
            network = network_from_onnx_path(str(onnx_path), strongly_typed=options.strongly_typed)
            engine = engine_bytes_from_network(network, config=config, save_timing_cache=new_cache)
        return [*files, write_atomic(directory / f"{graph.name}.engine", engine)]

    def _build_dynamo(self, graph: GraphSpec, settings: BuildSettings, options: TensorRTOptions, directory: Path,
                      cache: Path) -> list[Path]:
        import torch_tensorrt

        device = torch.device(settings.device)
        inputs = [t.to(device) for t in graph.example_inputs]
        with torch.no_grad():
            program = torch.export.export(graph.module, tuple(inputs))
        wanted: dict[str, Any] = {"arg_inputs": inputs, "timing_cache_path": str(cache)}
        if options.workspace_mib is not None:
            wanted["workspace_size"] = options.workspace_mib << 20
        params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
        # torch_tensorrt >= 2.13 is strongly typed only (neither argument exists); 2.8-2.12 choose with
        # use_explicit_typing, where enabled_precisions must then stay at its default
        if "use_explicit_typing" in params:
            wanted["use_explicit_typing"] = options.strongly_typed
        if "enabled_precisions" in params and (not options.strongly_typed or "use_explicit_typing" not in params):
            wanted["enabled_precisions"] = {settings.dtype}
        compiled = torch_tensorrt.dynamo.compile(program, **{k: v for k, v in wanted.items() if k in params})
        path = directory / f"{graph.name}.ep"
        with atomic_path(path) as tmp:
            torch_tensorrt.save(compiled, str(tmp), output_format="exported_program", arg_inputs=inputs)
        return [path]

    def _strip(self, graph: GraphSpec, files: list[Path], directory: Path,
               weights: SharedWeights | None) -> list[Path]:
        """Record each refittable weight of the just-built engine as the model tensor it is (or keep its value in
        ``<graph>.extra.safetensors`` where it is none), then drop the ONNX files: the engine plus the directory's
        shared weights file are the artifact."""
        import onnx
        import tensorrt as trt
        from onnx import numpy_helper

        onnx_path = _pick(files, f"{graph.name}.onnx", graph)
        engine_path = _pick(files, f"{graph.name}.engine", graph)
        model = onnx.load(str(onnx_path), load_external_data=True)
        initializers = {i.name: i for i in model.graph.initializer}
        with torch.cuda.device(torch.device("cuda", torch.cuda.current_device())):
            engine = trt.Runtime(_trt_logger()).deserialize_cuda_engine(engine_path.read_bytes())
            names = list(trt.Refitter(engine, _trt_logger()).get_all_weights())
        shared = weights.tensors if weights is not None else {}
        entries: dict[str, WeightEntry] = {}
        extra: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in initializers:
                raise RuntimeError(f"{graph.name}: TensorRT lists refittable weight {name!r}, which the ONNX export "
                                   f"has no initializer for; cannot record where it comes from")
            value = torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())
            key = graph.weight_names.get(name)
            if key is None or key not in shared or tuple(shared[key].shape) != tuple(value.shape):
                key = None
                extra[name] = value.contiguous()
            entries[name] = entry_of(key, value)
        kept = [engine_path, write_weight_map(directory / f"{graph.name}{WEIGHT_MAP_SUFFIX}", graph.name, entries)]
        if extra:
            from safetensors.torch import save_file

            with atomic_path(directory / f"{graph.name}{EXTRA_SUFFIX}") as tmp:
                save_file(extra, str(tmp))
            kept.append(directory / f"{graph.name}{EXTRA_SUFFIX}")
        for f in files:
            if Path(f).name.startswith(f"{graph.name}.onnx"):
                Path(f).unlink()  # the weights are the directory's, once
        return [*kept, *(Path(f) for f in files if Path(f).exists() and Path(f) not in kept)]

    # ---- load ---------------------------------------------------------------------------------------------
    def load(self, graph: GraphSpec, settings: BuildSettings, files: Sequence[Path],
             weights: SharedWeights | None = None) -> FlatFn:
        """Deserialize the graph's engine (refused when built for another TensorRT or GPU) as a flat callable."""
        options = self._check(settings)
        suffix = ".ep" if options.route == "dynamo" else ".engine"
        path = _pick(files, f"{graph.name}{suffix}", graph)
        records = [Path(f) for f in files if Path(f).name == f"{graph.name}.trt.json"]
        record_path = records[0] if records else _record_path(path.parent, graph)
        if record_path.is_file():
            reason = engine_compatibility(json.loads(record_path.read_text()))
            if reason:
                raise EngineIncompatible(f"{graph.name} ({path}): {reason}")
        device = torch.device(settings.device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if options.route == "dynamo":
            return self._load_dynamo(graph, path)
        refit = None
        maps = [Path(f) for f in files if Path(f).name == f"{graph.name}{WEIGHT_MAP_SUFFIX}"]
        if maps:  # a weight-stripped engine: refitted from the directory's shared weights before it runs
            extras = [Path(f) for f in files if Path(f).name == f"{graph.name}{EXTRA_SUFFIX}"]
            refit = (read_weight_map(maps[0]), extras[0] if extras else None, weights)
        return self._load_engine(graph, path, device, options, refit)

    def _load_engine(self, graph: GraphSpec, path: Path, device: torch.device, options: TensorRTOptions,
                     refit: tuple | None = None) -> FlatFn:
        import tensorrt as trt

        if self._device is None:
            self._device = device
        elif device != self._device:
            raise ValueError(f"one TensorRT backend instance runs on one GPU ({self._device}); {graph.name} asks for "
                             f"{device}: use another instance")
        with torch.cuda.device(device):
            if self._runtime is None:
                self._runtime = trt.Runtime(_trt_logger())
                self._stream = torch.cuda.Stream(device)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineIncompatible(f"TensorRT {trt.__version__} could not deserialize {path} (built by another "
                                         f"TensorRT version or for another GPU, or corrupted); re-run export-engines "
                                         f"on this machine")
            if refit is not None:
                entries, extra_path, weights = refit
                refit_engine(engine, graph.name, entries, weights, extra_path, device)
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {graph.name}")
            inputs, outputs = _engine_io(engine, graph)
            for name, spec in zip(inputs, graph.inputs):
                if not context.set_input_shape(name, spec.shape):
                    raise ValueError(f"{graph.name}: the engine rejects shape {list(spec.shape)} for input {name}")
        size = getattr(engine, "device_memory_size_v2", None)
        self._scratch_needed = max(self._scratch_needed, engine.device_memory_size if size is None else size)
        return _EngineRunner(self, graph, context, inputs, outputs, device, options.cuda_graph)

    def _scratch(self) -> tuple[int, int, int]:
        """Pointer, size and generation of the one scratch buffer, (re)allocated to the largest engine's need.

        Allocated on first execution, after the loads, so that a directory's engines get exactly one buffer;
        a later, larger load replaces it (generation + 1: captured CUDA graphs are captured again).
        """
        buffer = self._scratch_buffer
        if buffer is None or buffer.numel() < self._scratch_needed:
            with torch.cuda.stream(self._stream):  # freed in this stream's order, where the engines use it
                self._scratch_buffer = None
                buffer = torch.empty(self._scratch_needed, dtype=torch.uint8, device=self._device)
            self._scratch_buffer = buffer
            self._scratch_generation += 1
        return buffer.data_ptr(), buffer.numel(), self._scratch_generation

    @staticmethod
    def _load_dynamo(graph: GraphSpec, path: Path) -> FlatFn:
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops the program calls)

        module = torch.export.load(str(path)).module()

        @torch.no_grad()
        def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if len(xs) != len(graph.inputs):
                raise TypeError(f"{graph.name} takes {len(graph.inputs)} inputs {list(graph.input_names)}, "
                                f"got {len(xs)}")
            outs = module(*xs)
            return tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)

        return run


def _stripped_config(create_config):
    """polygraphy's config loader plus the weight-stripped, refittable flags (TensorRT >= 10.0)."""
    import tensorrt as trt

    def make(builder, network):
        config = create_config(builder, network)
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)  # no refittable weights in the serialized engine
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)  # refitted with the weights it was built with
        return config

    return make


def refit_engine(engine: Any, graph: str, entries: Mapping[str, WeightEntry], weights: SharedWeights | None,
                 extra_path: Path | None, device: torch.device, trt_module: Any = None) -> None:
    """Set every refittable weight of a weight-stripped ``engine`` from the shared weights (its own extras for the
    rest), refusing before ``refit_cuda_engine`` when any is unknown or missing."""
    trt = trt_module
    if trt is None:
        import tensorrt as trt
    if weights is None and any(e.key is not None for e in entries.values()):
        raise ValueError(f"{graph}: a weight-stripped engine is refitted from the engine directory's shared weights; "
                         f"load it with export.load.load_engines (or pass weights=SharedWeights)")
    extra = {}
    if extra_path is not None:
        from safetensors.torch import load_file

        extra = load_file(str(extra_path), device=str(device))
    refitter = trt.Refitter(engine, _trt_logger())
    names = list(refitter.get_all_weights())
    source = weights if weights is not None else SharedWeights("fp32", str(device))
    tensors = source.resolve(graph, entries, names, extra)  # raises on an unknown, missing or misshapen weight
    dtypes = _trt_dtypes()
    by_torch = {v: k for k, v in dtypes.items()}
    held = []
    for name in names:
        tensor = tensors[name].to(device).contiguous()
        held.append(tensor)  # alive until the refit copied it
        weight = trt.Weights(by_torch[tensor.dtype], tensor.data_ptr(), tensor.numel())
        if not refitter.set_named_weights(name, weight, trt.TensorLocation.DEVICE):
            raise RuntimeError(f"{graph}: TensorRT refused the weight {name!r} ({tensor.dtype}{list(tensor.shape)})")
    missing = list(refitter.get_missing_weights())
    if missing:
        raise ValueError(f"{graph}: the engine still misses weights {missing[:5]} after refitting; export again")
    if not refitter.refit_cuda_engine():
        raise RuntimeError(f"{graph}: TensorRT could not refit the engine (see the TensorRT log above)")
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # the refit read the tensors asynchronously


def _trt_logger():
    """polygraphy's TensorRT logger when there is one: TensorRT wants one logger per process."""
    try:
        from polygraphy.backend.trt import get_trt_logger

        return get_trt_logger()
    except Exception:
        import tensorrt as trt

        return trt.Logger(trt.Logger.WARNING)
