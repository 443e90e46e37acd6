"""The ONNX Runtime backend: each graph exported once to a static-shape ``.onnx`` file, run by an InferenceSession.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + the onnxscript translator). The legacy
TorchScript exporter (``dynamo=False``) cannot export these graphs: while it traces, ``tensor.shape``
entries become 0-d tensors so the trace can record dynamic sizes, and the Python shape arithmetic in the
DiT tail (``int(round(tokens ** 0.5))``) then fails with ``TypeError: type Tensor doesn't define
__round__``. torch.export specializes every shape to the example inputs (static shapes are what we want:
the GraphSpec shapes are the profile), so all Python control flow of a variant (which ranges are
replayed, recorded, cache mode) is evaluated away and the graph holds tensor ops only. The legacy
exporter is also deprecated in recent torch. Cost: ~1-2 s per graph on the tiny model.

Files: ``<graph.name>.onnx`` and, for models whose parameters exceed :data:`EXTERNAL_DATA_THRESHOLD`
(protobuf cannot serialize a model over 2 GiB) or when ``options["external_data"]`` forces it, one
``<graph.name>.onnx.data`` next to it. Both are written into a staging folder inside ``directory`` and
moved into place with ``os.replace`` (data first, the ``.onnx`` last), so an interrupted build never
leaves a complete-looking artifact.

Options (``BuildSettings.options``):
    provider: ``cpu`` | ``cuda`` | ``tensorrt`` (default: ``cuda`` when ``settings.device`` is CUDA, else ``cpu``).
    threads: intra-op threads of the session (default: ONNX Runtime's choice).
    external_data: true / false forces / forbids the ``.onnx.data`` file (default ``auto``: by parameter bytes;
        the exporter still externalizes a model whose initializers exceed ~1.5 GB).
    opset: ONNX opset to export (default :data:`DEFAULT_OPSET`, at least :data:`MIN_OPSET`).
    optimize: run the onnxscript optimizer (constant folding, rewrites) on export (default true; false
        exports ~25% faster and leaves all optimization to the session's ORT_ENABLE_ALL).
    prepack: load time, with shared weights: let ONNX Runtime prepack weights (default false: a copy per session).

Weights once (export-engines hands ``build`` and ``load`` one SharedWeights for all graphs of a directory): every
initializer of at least :data:`SHARE_BYTES` is stored once per engine directory, as
``weights/onnx-<precision>/<sha256 of its bytes>.bin``, and each ``.onnx`` keeps it as ONNX external data pointing
at that file (no ``.onnx.data`` of its own). Identical initializers of different variant graphs (the same weight,
or the same transposed weight the exporter folded) are one file. At load, each file becomes one OrtValue, created
once and handed to every session with ``SessionOptions.add_initializer`` (ONNX Runtime then uses that memory
instead of reading the initializer), and the sessions are created from the model bytes with the weights folder
as ``session.model_external_initializers_file_folder_path`` (ONNX Runtime refuses external data outside a model's
own folder). MLAS prepacking is switched off for these sessions: it would give every session its own packed copy
of every weight (measured: 5 variant sessions of a width-256 DiT, 160 MB more with prepacking, 8 MB without).
On CUDA the OrtValues stay on the host: each session's CUDA provider copies its initializers to the device.
Without ``weights`` (TensorRT's export, a bare ``build`` call) the file layout is as below.

Names: ONNX graphs are in SSA form, so an output may not reuse an input's name; a segment's ``h -> h`` becomes
inputs ``h, ...`` and output ``h_out`` in the file (:func:`onnx_output_names`). The flat callable returns
outputs by position, so callers never see the renaming.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ditcache.graphs.dtypes import dtype_of

from ditcache.compiler.atomic import write_atomic
from ditcache.compiler.backend import BuildSettings, FlatFn, GraphSpec
from ditcache.compiler.shared_weights import SharedWeights

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_OPSET = 18  # the dynamo exporter's native opset; lower ones go through the version converter
MIN_OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1_500_000_000  # bytes of parameters; protobuf's hard limit is 2 GiB per file
KNOWN_OPTIONS = ("provider", "threads", "external_data", "opset", "optimize", "prepack")
SHARE_BYTES = 1024  # initializers at least this large are stored once per engine directory
INSTALL_HINT = "pip install ditcache[onnx]"

# ONNX element type name (TensorProto.DataType) and ORT type string -> torch dtype name used by TensorSpec
_ONNX_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64",
                "INT64": "int64", "INT32": "int32", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32",
               "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntimeBackend:
    """Static-shape ONNX files run by ONNX Runtime (CPU, CUDA or TensorRT execution provider)."""

    name = "onnxruntime"
    writes_artifacts = True
    runtime_options = frozenset({"threads", "prepack"})  # load-time only: not part of the artifact key
    shared_weights = "own"  # weights/onnx-<precision>/<sha256>.bin, see the module docstring

    # ---- availability ---------------------------------------------------------------------------------
    def unavailable_reason(self, settings: BuildSettings) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime
        except ImportError as exc:
            return f"the onnx and onnxruntime packages are needed ({exc}); install them with `{INSTALL_HINT}`"
        unknown = sorted(set(settings.options) - set(KNOWN_OPTIONS))
        if unknown:
            return f"unknown option(s) {unknown} for onnxruntime; known: {', '.join(KNOWN_OPTIONS)}"
        try:
            provider = provider_key(settings)
            _opset(settings)
            _threads(settings)
            _forced_external_data(settings)
            _optimize(settings)
            _flag(settings, "prepack", False)
        except ValueError as exc:
            return str(exc)
        if settings.precision == "bf16":
            return ("ONNX Runtime has no bfloat16 kernels for this model's ops on its CPU execution provider "
                    "(session creation fails, e.g. 'tensor(bfloat16) of input x of operator Conv is invalid'); "
                    "export with --precision fp32 or fp16, or use the inductor backend for bf16")
        available = onnxruntime.get_available_providers()
        if PROVIDERS[provider] not in available:
            hint = {"cuda": "install onnxruntime-gpu (and not the CPU-only onnxruntime) on a machine with CUDA",
                    "tensorrt": "install onnxruntime-gpu built with TensorRT, and TensorRT itself",
                    "cpu": INSTALL_HINT}[provider]
            return (f"execution provider {PROVIDERS[provider]} (provider={provider!r}) is not in this onnxruntime "
                    f"{onnxruntime.__version__}; available: {', '.join(available)}; {hint}")
        if provider in ("cuda", "tensorrt") and not settings.device.startswith("cuda"):
            return f"provider={provider!r} runs on the GPU: use --device cuda (or provider=cpu)"
        return None

    def versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime

        return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}

    # ---- build -------------------------------------------------------------------------------------------
    def build(self, graph: GraphSpec, settings: BuildSettings, directory: Path,
              weights: SharedWeights | None = None) -> list[Path]:
        """Export ``graph.module`` to ``directory/<graph.name>.onnx`` (+ ``.onnx.data``, or its large initializers
        into ``weights.folder`` once per directory); return the files."""
        import onnx

        if graph.module is None:
            raise ValueError(f"cannot export {graph.name}: the GraphSpec has no module "
                             f"(it only describes a prebuilt artifact)")
        if len(graph.example_inputs) != len(graph.inputs):
            raise ValueError(f"{graph.name}: {len(graph.example_inputs)} example inputs for {len(graph.inputs)} inputs")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        external = weights is not None or _use_external_data(graph.module, settings)
        model_name = f"{graph.name}.onnx"
        data_name = f"{model_name}.data"
        staging = Path(tempfile.mkdtemp(prefix=f".{graph.name}.", suffix=".tmp", dir=directory))
        try:
            staged = staging / model_name
            _export(graph, staged, _opset(settings), external, _optimize(settings))
            try:  # path-based: also resolves and checks the external data file
                onnx.checker.check_model(str(staged))
            except onnx.checker.ValidationError as exc:
                raise RuntimeError(f"the ONNX exported for {graph.name} is invalid: {exc}") from exc
            _check_signature(graph, onnx.load(str(staged), load_external_data=False))
            if weights is not None:
                share_initializers(staged, graph.name, weights)
            written = sorted(p.name for p in staging.iterdir())
            unexpected = set(written) - {model_name, data_name}
            if unexpected:
                raise RuntimeError(f"the ONNX exporter wrote unexpected files {sorted(unexpected)} for {graph.name}")
            files = []
            if data_name in written:
                os.replace(staging / data_name, directory / data_name)
                files.append(directory / data_name)
            else:
                (directory / data_name).unlink(missing_ok=True)  # stale data of an earlier external export
            os.replace(staged, directory / model_name)  # last: a present .onnx means a complete artifact
            files.insert(0, directory / model_name)
            return files
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ---- load --------------------------------------------------------------------------------------------
    def load(self, graph: GraphSpec, settings: BuildSettings, files: Sequence[Path],
             weights: SharedWeights | None = None) -> FlatFn:
        """An InferenceSession over the graph's ``.onnx`` file as a flat callable of torch tensors (its shared
        initializers, if any, from ``weights``: one OrtValue per file for all sessions)."""
        import onnxruntime as ort

        path = _model_file(graph, files)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = _threads(settings)
        if threads:
            options.intra_op_num_threads = threads
        provider = provider_key(settings)
        model: str | bytes = str(path)
        held: list[Any] = []
        try:
            shared = _shared_initializers(path, settings.precision)
        except Exception as exc:  # onnx raises protobuf's DecodeError for a damaged file
            raise ValueError(f"onnx cannot parse {graph.name} from {path}: {type(exc).__name__}: {exc}. The file is "
                             f"truncated, corrupted or not an ONNX model; export it again") from exc
        if shared:
            if weights is None or weights.folder is None:
                raise ValueError(f"{graph.name}: {path} keeps its weights in the engine directory's weights folder; "
                                 f"load it with export.load.load_engines (or pass weights=SharedWeights)")
            held = _add_shared_initializers(options, shared, weights, graph.name)
            if not _flag(settings, "prepack", False):
                options.add_session_config_entry("session.disable_prepacking", "1")  # no copy per session
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(weights.folder))
            model = path.read_bytes()  # from bytes: the external data lives outside the model's folder
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=_providers(settings))
        except Exception as exc:  # ORT raises its own InvalidProtobuf / InvalidGraph / Fail / NoSuchFile types
            raise ValueError(
                f"onnxruntime cannot load {graph.name} from {path}: {type(exc).__name__}: {exc}. The file is "
                f"truncated, corrupted or not an ONNX model (or its .onnx.data is missing); export it again"
            ) from exc
        if PROVIDERS[provider] not in session.get_providers():
            raise RuntimeError(
                f"onnxruntime fell back to {session.get_providers()} for {graph.name}: {PROVIDERS[provider]} could "
                f"not be initialized (check CUDA/cuDNN/TensorRT libraries match onnxruntime-gpu)"
            )
        _check_session(graph, session, path)
        if provider in ("cuda", "tensorrt"):
            run = _cuda_runner(graph, session, _device_id(settings))
        else:
            run = _numpy_runner(graph, session)
        run.initializers = held  # type: ignore[attr-defined]  (the sessions use this memory: keep it alive)
        return run


# ---- settings --------------------------------------------------------------------------------------------
def provider_key(settings: BuildSettings) -> str:
    """``cpu``, ``cuda`` or ``tensorrt``: ``options["provider"]``, else by device."""
    default = "cuda" if settings.device.startswith("cuda") else "cpu"
    provider = str(settings.options.get("provider", default)).lower()
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)} (got {provider!r})")
    return provider


def _opset(settings: BuildSettings) -> int:
    opset = settings.options.get("opset", DEFAULT_OPSET)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an integer >= {MIN_OPSET} (got {opset!r})")
    return opset


def _flag(settings: BuildSettings, name: str, default: bool) -> bool:
    value = settings.options.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false (got {value!r})")
    return value


def _optimize(settings: BuildSettings) -> bool:
    optimize = settings.options.get("optimize", True)
    if not isinstance(optimize, bool):
        raise ValueError(f"optimize must be true or false (got {optimize!r})")
    return optimize


def onnx_output_names(graph: GraphSpec) -> tuple[str, ...]:
    """Output names in the ONNX file: the GraphSpec's, with ``_out`` appended where one equals an input's."""
    taken = set(graph.input_names)
    names = []
    for name in graph.output_names:
        while name in taken:
            name += "_out"
        taken.add(name)
        names.append(name)
    return tuple(names)


def _threads(settings: BuildSettings) -> int | None:
    threads = settings.options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer (got {threads!r})")
    return threads


def _device_id(settings: BuildSettings) -> int:
    _, _, index = settings.device.partition(":")
    return int(index) if index else 0


def _providers(settings: BuildSettings) -> list[Any]:
    provider = provider_key(settings)
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": _device_id(settings)})
    if provider == "cuda":
        return [cuda, "CPUExecutionProvider"]
    trt = ("TensorrtExecutionProvider", {"device_id": _device_id(settings),
                                         "trt_fp16_enable": settings.precision == "fp16"})
    return [trt, cuda, "CPUExecutionProvider"]  # nodes TensorRT cannot take fall back to CUDA, then CPU


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the (deduplicated) parameters and buffers a module's export will carry."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _forced_external_data(settings: BuildSettings) -> bool | None:
    forced = settings.options.get("external_data")
    if forced == "auto":
        return None
    if forced is not None and not isinstance(forced, bool):
        raise ValueError(f"external_data must be true, false or auto (got {forced!r})")
    return forced


def _use_external_data(module: torch.nn.Module, settings: BuildSettings) -> bool:
    forced = _forced_external_data(settings)
    if forced is not None:
        return forced
    return parameter_bytes(module) > EXTERNAL_DATA_THRESHOLD


# ---- export ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress prints, its torchvision-missing warnings and deprecation noise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(graph: GraphSpec, path: Path, opset: int, external: bool, optimize: bool) -> None:
    args = tuple(graph.example_inputs)
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                graph.module, args, None, dynamo=True, input_names=list(graph.input_names),
                output_names=list(onnx_output_names(graph)), opset_version=opset, external_data=external,
                optimize=optimize, verbose=False,
            )
        except Exception as exc:
            raise RuntimeError(f"ONNX export of {graph.name} failed: {type(exc).__name__}: {exc}") from exc
        # ONNXProgram.save writes external data as '<file>.onnx.data' next to it (and forces it over ~1.5 GB)
        program.save(str(path), external_data=external)


def _check_signature(graph: GraphSpec, model: Any) -> None:
    """The exported graph's inputs/outputs have the GraphSpec's names, dtypes and static shapes."""
    import onnx

    def describe(values) -> list[tuple[str, str, tuple]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dtype = onnx.TensorProto.DataType.Name(t.elem_type)
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim)
            out.append((v.name, _ONNX_DTYPES.get(dtype, dtype.lower()), dims))
        return out

    for kind, got, want, names in (("inputs", describe(model.graph.input), graph.inputs, graph.input_names),
                                   ("outputs", describe(model.graph.output), graph.outputs, onnx_output_names(graph))):
        expected = [(n, t.dtype, tuple(t.shape)) for n, t in zip(names, want)]
        if got != expected:
            raise RuntimeError(f"the exported ONNX {kind} of {graph.name} are {got}, the GraphSpec says {expected} "
                               f"(name, dtype, shape); the exporter changed the signature")


# ---- shared initializers ---------------------------------------------------------------------------------
def shared_folder(precision: str) -> str:
    """Where a directory's shared ONNX initializers live, relative to its weights folder."""
    return f"onnx-{precision}"


def share_initializers(path: Path, graph: str, weights: SharedWeights) -> None:
    """Move every initializer of at least SHARE_BYTES of the ONNX file at ``path`` (exported with external data
    beside it) into the directory's shared files (one per distinct content), and rewrite the file to reference
    them; smaller initializers are kept inside the file. The external data file beside it is removed."""
    import hashlib

    import onnx

    model = onnx.load(str(path), load_external_data=True)
    folder = Path(weights.folder)
    for init in model.graph.initializer:
        if not init.HasField("raw_data") or len(init.raw_data) < SHARE_BYTES:
            if init.data_location == onnx.TensorProto.EXTERNAL:  # a small one the exporter still externalized
                init.data_location = onnx.TensorProto.DEFAULT
                del init.external_data[:]
            continue
        data = init.raw_data
        name = f"{shared_folder(weights.precision)}/{hashlib.sha256(data).hexdigest()}.bin"
        target = folder / name
        if not target.is_file() or target.stat().st_size != len(data):
            write_atomic(target, data, mkdir=True)  # the same bytes from another graph: written once
        weights.use(graph, name)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        del init.external_data[:]
        for key, value in (("location", name), ("offset", "0"), ("length", str(len(data)))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    for node in model.graph.node:  # the exporter's debug records (stack traces, scopes): ~3/4 of the file,
        del node.metadata_props[:]  # held again by every session
    for leftover in path.parent.iterdir():
        if leftover != path:
            leftover.unlink()  # the exporter's .onnx.data: now in the shared files
    onnx.save(model, str(path))


def _shared_initializers(path: Path, precision: str) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """(name, shared file, ONNX element type, dims) of every initializer of ``path`` kept in the directory's shared
    files (not those in an external data file of its own, beside it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    prefix = f"{shared_folder(precision)}/"
    out = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in init.external_data}.get("location", "")
            if location.startswith(prefix):
                out.append((init.name, location, init.data_type, tuple(init.dims)))
    return out


def _add_shared_initializers(options: Any, shared: list[tuple[str, str, int, tuple[int, ...]]],
                             weights: SharedWeights, graph: str) -> list[Any]:
    """Hand every shared initializer to ``options`` as an OrtValue made once per (file, type, shape) for all
    sessions of the directory; returns them (they must outlive the session)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    cache = weights.handles.setdefault("onnxruntime", {})
    folder = Path(weights.folder)
    held = []
    for name, location, elem_type, dims in shared:
        key = (location, elem_type, dims)
        if key not in cache:
            file = folder / location
            if not location or not file.resolve().is_relative_to(folder.resolve()) or not file.is_file():
                raise FileNotFoundError(f"{graph}: initializer {name} is in {location!r}, which is not among the "
                                        f"directory's shared weights ({folder}); export again")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
            array = np.fromfile(file, dtype=dtype)
            if array.size != int(np.prod(dims, dtype=np.int64)):
                raise ValueError(f"{graph}: shared weight {location} holds {array.size} values, initializer {name} "
                                 f"needs {list(dims)}; export again")
            array = array.reshape(dims)
            cache[key] = (array, ort.OrtValue.ortvalue_from_numpy(array))
        array, value = cache[key]
        options.add_initializer(name, value)
        held.append(cache[key])
    return held


# ---- load ------------------------------------------------------------------------------------------------
def _model_file(graph: GraphSpec, files: Sequence[Path]) -> Path:
    models = [Path(f) for f in files if str(f).endswith(".onnx")]
    if len(models) != 1:
        raise ValueError(f"expected exactly one .onnx file for {graph.name}, got {[str(f) for f in files]}")
    if not models[0].is_file():
        raise FileNotFoundError(f"ONNX artifact of {graph.name} is missing: {models[0]}; export it again")
    return models[0]


def _check_session(graph: GraphSpec, session: Any, path: Path) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    got = (tuple(i.name for i in inputs), tuple(o.name for o in outputs))
    want = (graph.input_names, onnx_output_names(graph))
    if got != want:
        raise ValueError(
            f"{path} has inputs {list(got[0])} and outputs {list(got[1])} but graph {graph.name} expects inputs "
            f"{list(want[0])} and outputs {list(want[1])}: a foreign or stale artifact; export it again"
        )
    for arg, spec in zip((*inputs, *outputs), (*graph.inputs, *graph.outputs)):
        dtype = _ORT_DTYPES.get(arg.type, arg.type)
        if dtype != spec.dtype or tuple(arg.shape) != tuple(spec.shape):
            raise ValueError(f"{path}: {arg.name} is {dtype}{list(arg.shape)} but graph {graph.name} expects "
                             f"{spec.dtype}{list(spec.shape)}; export it again")


def _numpy_runner(graph: GraphSpec, session: Any) -> FlatFn:
    """CPU execution: torch -> numpy (zero-copy for contiguous CPU tensors) -> ORT -> torch."""
    input_names, output_names = list(graph.input_names), list(onnx_output_names(graph))

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(args) != len(input_names):
            raise TypeError(f"{graph.name} takes {len(input_names)} inputs {input_names}, got {len(args)}")
        device = args[0].device
        feed = {n: a.detach().cpu().contiguous().numpy() for n, a in zip(input_names, args)}
        outs = session.run(output_names, feed)
        return tuple(torch.from_numpy(o).to(device) for o in outs)

    return run


def _cuda_runner(graph: GraphSpec, session: Any, device_id: int) -> FlatFn:
    """CUDA/TensorRT execution via io_binding: inputs and outputs stay torch CUDA tensors (no host copies).

    Fresh output tensors each call: the dispatcher keeps recorded outputs as caches across steps.
    """
    import numpy as np

    device = torch.device("cuda", device_id)
    input_names = list(graph.input_names)
    np_types = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
    outputs = [(name, s.shape, dtype_of(s.dtype), np_types[s.dtype])
               for name, s in zip(onnx_output_names(graph), graph.outputs)]
    inputs_np = [np_types[s.dtype] for s in graph.inputs]

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(args) != len(input_names):
            raise TypeError(f"{graph.name} takes {len(input_names)} inputs {input_names}, got {len(args)}")
        binding = session.io_binding()
        held = []  # keep the bound buffers alive until the run returns
        for name, arg, np_type in zip(input_names, args, inputs_np):
            t = arg.detach().to(device).contiguous()
            held.append(t)
            binding.bind_input(name, "cuda", device_id, np_type, tuple(t.shape), t.data_ptr())
        results = []
        for name, shape, dtype, np_type in outputs:
            out = torch.empty(shape, dtype=dtype, device=device)
            results.append(out)
            binding.bind_output(name, "cuda", device_id, np_type, tuple(shape), out.data_ptr())
        torch.cuda.current_stream(device).synchronize()  # ORT runs on its own stream: inputs must be ready
        session.run_with_iobinding(binding)  # returns after ORT synchronized its stream (the default)
        return tuple(results)

    return run
