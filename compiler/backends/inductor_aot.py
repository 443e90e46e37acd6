"""The inductor backend: every graph compiled ahead of time into an AOTInductor package, loaded without dynamo.

Build: ``torch.export.export(graph.module, example_inputs)`` (static shapes, the GraphSpec's), then
``torch._inductor.aoti_compile_and_package`` with ``aot_inductor.package_constants_in_so=False``: the package
(``<graph.name>.pt2``) holds the compiled kernels and no weights. Beside it, ``<graph.name>.weights.json`` records
each of the package's constants as the model tensor it is (its FQN in the directory's shared weights file,
``weights/<precision>.safetensors``, written once by export-engines for all graphs), with shape and dtype.

Load: ``AOTIModelPackageLoader`` as ``torch._inductor.aoti_load_package`` uses it (no dynamo, no compilation: the
package is a shared library; see :func:`_package` for why not through that wrapper), then
``load_constants(..., check_full_update=True, user_managed=True)`` with the tensors of the one
:class:`~ditcache.compiler.shared_weights.SharedWeights`: every variant graph of a directory references the same
memory. The package's constant names (``get_constant_fqns()``) are checked against the record before any
tensor is handed over — an incomplete constant map crashes the loader (a segfault, found on torch 2.13) instead
of raising, so it never reaches it. The package's device and CPU instruction set (or GPU compute capability) are
checked against this machine first. (Inductor inlines 1-D constants of at most 8 values into the generated code;
those are not package constants, and the record holds only what the package asks for.)

Options (``BuildSettings.options``):
    cuda_graphs: CUDA only, load time: the package is loaded with ``run_single_threaded=True`` (AOTInductor's
        documented mode for CUDA graph capture) and each graph is captured once as a CUDA graph on first call;
        inputs are copied into static buffers, outputs cloned so recorded caches live in their own memory.
    max_autotune: build time: inductor's ``max_autotune`` (longer builds, tuned GEMMs).
"""

from __future__ import annotations

import logging
import platform
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ditcache.compiler.atomic import atomic_path
from ditcache.compiler.backend import BuildSettings, FlatFn, GraphSpec
from ditcache.compiler.shared_weights import (
    EXTRA_SUFFIX,
    WEIGHT_MAP_SUFFIX,
    SharedWeights,
    WeightEntry,
    entry_of,
    read_weight_map,
    write_weight_map,
)

KNOWN_OPTIONS = ("cuda_graphs", "max_autotune")
PACKAGE_SUFFIX = ".pt2"
MODEL_NAME = "model"  # the one model inside each package


class InductorAOTBackend:
    """AOTInductor ``.pt2`` packages with their constants kept out, loaded from the directory's shared weights."""

    name = "inductor"
    writes_artifacts = True
    shared_weights = "model"
    runtime_options = frozenset({"cuda_graphs"})  # load-time only: not part of the artifact key

    # ---- availability ---------------------------------------------------------------------------------------
    def unavailable_reason(self, settings: BuildSettings) -> str | None:
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            return "CUDA was requested but torch.cuda.is_available() is False"
        if not (settings.device == "cpu" or settings.device.startswith("cuda")):
            return f"the inductor backend compiles for cpu or cuda (got device {settings.device!r})"
        unknown = sorted(set(settings.options) - set(KNOWN_OPTIONS))
        if unknown:
            return f"unknown inductor option(s) {unknown}; known: {', '.join(KNOWN_OPTIONS)}"
        for flag in KNOWN_OPTIONS:
            if flag in settings.options and not isinstance(settings.options[flag], bool):
                return f"inductor option {flag} must be true or false (got {settings.options[flag]!r})"
        if settings.options.get("cuda_graphs") and not settings.device.startswith("cuda"):
            return "cuda_graphs needs --device cuda"
        return None

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    # ---- build ----------------------------------------------------------------------------------------------
    def build(self, graph: GraphSpec, settings: BuildSettings, directory: Path,
              weights: SharedWeights | None = None) -> list[Path]:
        """Export and compile ``graph`` into ``directory/<graph.name>.pt2`` plus its weight map; return the files."""
        if graph.module is None:
            raise ValueError(f"cannot compile {graph.name}: the GraphSpec has no module")
        if len(graph.example_inputs) != len(graph.inputs):
            raise ValueError(f"{graph.name}: {len(graph.example_inputs)} example inputs for {len(graph.inputs)} inputs")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        device = torch.device(settings.device)
        # contiguous examples: the package is compiled for its examples' strides and checks none at run time (a
        # transposed example, e.g. a patch embedding's output, would make contiguous inputs read garbage); the
        # runner hands it contiguous inputs
        example = tuple(x.to(device).contiguous() for x in graph.example_inputs)
        with torch.no_grad(), _quiet():
            try:
                program = torch.export.export(graph.module, example, strict=False)
            except Exception as exc:
                raise RuntimeError(f"torch.export of {graph.name} failed: {type(exc).__name__}: {exc}") from exc
            configs: dict[str, Any] = {"aot_inductor.package_constants_in_so": False}
            if settings.options.get("max_autotune"):
                configs["max_autotune"] = True
            path = directory / f"{graph.name}{PACKAGE_SUFFIX}"
            with atomic_path(path) as tmp:  # the temporary name keeps the .pt2 suffix AOTInductor requires
                try:
                    torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
                except Exception as exc:
                    raise RuntimeError(f"AOTInductor compile of {graph.name} failed (it needs a C++ compiler, and "
                                       f"for CUDA the CUDA toolkit): {type(exc).__name__}: {exc}") from exc
        names = _package(path, settings, run_single_threaded=False).get_constant_fqns()
        held = {**program.state_dict, **program.constants}  # the program's tensors by their FQN in graph.module
        entries: dict[str, WeightEntry] = {}
        extra: dict[str, torch.Tensor] = {}
        shared = weights.tensors if weights is not None else {}
        for name in names:
            tensor = held.get(name)
            if tensor is None:
                raise RuntimeError(f"the AOTInductor package of {graph.name} needs constant {name!r}, which the "
                                   f"exported program does not hold; cannot record where it comes from")
            key = graph.weight_names.get(name)
            if key is not None and key in shared and tuple(shared[key].shape) != tuple(tensor.shape):
                raise RuntimeError(f"{graph.name}: constant {name!r} maps to shared weight {key!r} of another shape")
            if key is None or (weights is not None and key not in shared):
                key = None
                extra[name] = tensor.detach().to("cpu").contiguous().clone()
            entries[name] = entry_of(key, tensor)
        files = [path, write_weight_map(directory / f"{graph.name}{WEIGHT_MAP_SUFFIX}", graph.name, entries)]
        if extra:  # constants that are not the model's tensors (lifted constants): the graph keeps its own
            from safetensors.torch import save_file

            extra_path = directory / f"{graph.name}{EXTRA_SUFFIX}"
            with atomic_path(extra_path) as tmp:
                save_file(extra, str(tmp))
            files.append(extra_path)
        return files

    # ---- load -----------------------------------------------------------------------------------------------
    def load(self, graph: GraphSpec, settings: BuildSettings, files: Sequence[Path],
             weights: SharedWeights | None = None) -> FlatFn:
        """The graph's package with its constants taken from ``weights`` (checked first), as a flat callable."""
        path = _pick(files, f"{graph.name}{PACKAGE_SUFFIX}", graph)
        entries = read_weight_map(_pick(files, f"{graph.name}{WEIGHT_MAP_SUFFIX}", graph))
        extras = [Path(f) for f in files if Path(f).name == f"{graph.name}{EXTRA_SUFFIX}"]
        extra = {}
        if extras:
            from safetensors.torch import load_file

            extra = load_file(str(extras[0]), device=settings.device)
        if weights is None and any(e.key is not None for e in entries.values()):
            raise ValueError(f"{graph.name}: the package keeps its weights in the engine directory's shared weights "
                             f"file; load it with export.load.load_engines (or pass weights=SharedWeights)")
        cuda_graphs = bool(settings.options.get("cuda_graphs"))
        problem = package_mismatch(path, settings)
        if problem:
            raise ValueError(f"{graph.name} ({path}): {problem}; re-run export-engines on this machine")
        package = _package(path, settings, run_single_threaded=cuda_graphs)
        constants = (weights or SharedWeights(settings.precision, settings.device)).resolve(
            graph.name, entries, list(package.get_constant_fqns()), extra)
        package.load_constants(constants, check_full_update=True, user_managed=True)
        run = _runner(graph, package, constants, weights)
        if cuda_graphs:
            return _CudaGraphRunner(graph, run, torch.device(settings.device))
        return run


def package_mismatch(path: Path, settings: BuildSettings) -> str | None:
    """Why the package at ``path`` cannot run here with ``settings`` (device, CPU instruction set, GPU), or None."""
    from torch._C._aoti import AOTIModelPackageLoader

    try:
        meta = AOTIModelPackageLoader.load_metadata_from_package(str(path), MODEL_NAME)
    except Exception as exc:  # not a zip, no model inside: a truncated or foreign file
        return f"not a readable AOTInductor package ({type(exc).__name__}: {exc})"
    device = torch.device(settings.device).type
    built = meta.get("AOTI_DEVICE_KEY", "")
    if built != device:
        return f"the package was compiled for {built or 'an unknown device'}, the request runs on {device}"
    if device == "cpu":
        machine = meta.get("AOTI_MACHINE", "")
        if machine and machine != platform.machine():
            return f"the package was compiled for {machine} CPUs, this one is {platform.machine()}"
        missing = [f for f in meta.get("AOTI_CPU_ISA", "").split() if not _cpu_supports(f)]
        if missing:
            return (f"the package was compiled for the CPU instruction set {meta['AOTI_CPU_ISA']}, this CPU lacks "
                    f"{', '.join(missing)}")
    else:
        capability = meta.get("AOTI_COMPUTE_CAPABILITY", "")
        index = torch.device(settings.device).index
        major, minor = torch.cuda.get_device_capability(index)
        if capability and capability != f"{major}{minor}":
            return f"the package was compiled for GPU compute capability {capability}, this GPU has {major}{minor}"
    return None


def _cpu_supports(feature: str) -> bool:
    """Whether this CPU has an instruction set AOTInductor names in a package (``AVX512``, ``AVX512_VNNI``, ...),
    from cpuinfo (inductor's own check compiles test programs: seconds each). Names it has no probe for pass."""
    probes = {"AVX2": "_is_avx2_supported", "AVX512": "_is_avx512_supported", "AVX512_VNNI": "_is_vnni_supported",
              "AMX_TILE": "_is_amx_tile_supported"}
    probe = getattr(torch.cpu, probes.get(feature.upper(), ""), None)
    return True if probe is None else bool(probe())


def _package(path: Path, settings: BuildSettings, run_single_threaded: bool):
    """The loaded package: ``AOTICompiledModel`` over ``AOTIModelPackageLoader``, as ``aoti_load_package`` builds it
    (same arguments), minus that wrapper's device-information check, which in a fresh process compiles inductor's
    CPU instruction-set probe programs (~16 s on 2 cores, and a C++ compiler at run time) only to log a warning:
    :func:`package_mismatch` checks the package's device, instruction set and GPU first, from cpuinfo."""
    from torch._C._aoti import AOTIModelPackageLoader
    from torch._inductor.package.package import AOTICompiledModel

    index = torch.device(settings.device).index
    with _quiet():
        loader = AOTIModelPackageLoader(str(path), MODEL_NAME, run_single_threaded, 1, -1 if index is None else index)
    return AOTICompiledModel(loader)


def _runner(graph: GraphSpec, package: Any, constants: dict[str, torch.Tensor],
            weights: SharedWeights | None) -> FlatFn:
    """The package as a flat callable: inputs in GraphSpec order (contiguous, as compiled), outputs as a tuple."""
    loader = package.loader  # boxed_run directly: no pytree (de)serialization per call
    count = len(graph.inputs)
    keep = (constants, weights)  # user-managed constants: the package holds raw pointers into these tensors

    @torch.no_grad()
    def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(xs) != count:
            raise TypeError(f"{graph.name} takes {count} inputs {list(graph.input_names)}, got {len(xs)}")
        for x, spec in zip(xs, graph.inputs):
            if tuple(x.shape) != spec.shape:
                raise ValueError(f"{graph.name}: input {spec.name} has shape {list(x.shape)}, the package was "
                                 f"compiled for {list(spec.shape)} (static shapes; the dispatcher splits batches)")
        return tuple(loader.boxed_run([x.contiguous() for x in xs]))

    run.constants = keep  # type: ignore[attr-defined]
    return run


class _CudaGraphRunner:
    """A loaded package replayed as one CUDA graph per graph (static shapes): inputs copied into static buffers,
    outputs cloned. Written against torch.cuda.graph and AOTInductor's run_single_threaded mode; unrun on CPU."""

    def __init__(self, graph: GraphSpec, run: FlatFn, device: torch.device):
        self.graph, self.run, self.device = graph, run, device
        self._cuda_graph: torch.cuda.CUDAGraph | None = None
        self._static_in: list[torch.Tensor] = []
        self._static_out: tuple[torch.Tensor, ...] = ()

    def _capture(self, xs: Sequence[torch.Tensor]) -> None:
        self._static_in = [x.detach().to(self.device).contiguous().clone() for x in xs]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the capture (lazy initialization, allocator)
                self.run(*self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._static_out = self.run(*self._static_in)
        except Exception as exc:
            raise RuntimeError(f"CUDA graph capture of {self.graph.name} failed ({exc}); load without "
                               f"cuda_graphs") from exc
        self._cuda_graph = graph

    @torch.no_grad()
    def __call__(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._cuda_graph is None:
            self._capture(xs)
        for static, x in zip(self._static_in, xs):
            static.copy_(x)
        self._cuda_graph.replay()
        return tuple(o.clone() for o in self._static_out)


def _pick(files: Sequence[Path], name: str, graph: GraphSpec) -> Path:
    found = [Path(f) for f in files if Path(f).name == name]
    if not found:
        raise FileNotFoundError(f"no {name} among the files of {graph.name}: {[str(f) for f in files]}; "
                                f"export it again")
    if not found[0].is_file():
        raise FileNotFoundError(f"the artifact of {graph.name} is missing: {found[0]}; export it again")
    return found[0]


class _quiet:
    """Silence torch.export/AOTInductor deprecation chatter (pytree FutureWarnings, packaging logs)."""

    def __enter__(self):
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", FutureWarning)
        self._logger = logging.getLogger("torch._inductor.package")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        self._warnings.__exit__(*exc)
        return False
