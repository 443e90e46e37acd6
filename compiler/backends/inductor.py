"""inductor-jit: ``torch.compile`` at first call (dynamo + inductor in process), one compiled callable per graph,
fullgraph, parameters shared with the model. Nothing is written at export; every process compiles again. The
deployable torch path is the ``inductor`` backend (compiler/backends/inductor_aot.py: AOTInductor packages)."""

from __future__ import annotations

import torch

from ditcache.compiler.backend import BuildSettings, FlatFn, GraphSpec

DEFAULT_MODE = None  # inductor's default; "max-autotune-no-cudagraphs" is an option
GRAPH_LIMIT = 256  # every variant/segment module shares one forward code object: allow that many graphs


def _allow_many_graphs() -> None:
    """Dynamo counts each module instance of the same class as a recompile of one code object; a plan
    legitimately has dozens, so raise the limits (never lower them)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name) and getattr(dynamo_config, name) < GRAPH_LIMIT:
            setattr(dynamo_config, name, GRAPH_LIMIT)


class InductorJITBackend:
    """JIT backend: nothing is written at export; graphs compile on first call (warm-up).

    Options: ``cuda_graphs`` (CUDA only: ``mode="reduce-overhead"``, cudagraph trees; outputs are cloned
    so that recorded caches live in their own buffers, outside the captured outputs), ``mode``.
    """

    name = "inductor-jit"
    writes_artifacts = False

    def unavailable_reason(self, settings: BuildSettings) -> str | None:
        if settings.device == "cuda" and not torch.cuda.is_available():
            return "CUDA was requested but torch.cuda.is_available() is False"
        if settings.options.get("cuda_graphs") and settings.device != "cuda":
            return "cuda_graphs needs --device cuda"
        unknown = set(settings.options) - {"cuda_graphs", "mode"}
        if unknown:
            return f"unknown inductor-jit option(s) {sorted(unknown)}; known: cuda_graphs, mode"
        return None

    def versions(self) -> dict[str, str]:
        versions = {"torch": torch.__version__}
        try:
            import triton

            versions["triton"] = triton.__version__
        except ImportError:
            pass
        return versions

    def build(self, graph: GraphSpec, settings: BuildSettings, directory) -> list:
        return []

    def load(self, graph: GraphSpec, settings: BuildSettings, files) -> FlatFn:
        if graph.module is None:
            raise ValueError(f"inductor-jit compiles from the model: load {graph.name} with the model's weights")
        _allow_many_graphs()
        cuda_graphs = bool(settings.options.get("cuda_graphs"))
        mode = "reduce-overhead" if cuda_graphs else settings.options.get("mode", DEFAULT_MODE)
        compiled = torch.compile(graph.module, fullgraph=True, dynamic=False, mode=mode)

        @torch.no_grad()
        def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # one layout for every call: dynamo guards on strides, and the runner hands over expanded (stride-0)
            # timesteps unchunked but gathered copies when it runs a request in chunks (a recompile per graph)
            xs = tuple(x.contiguous() for x in xs)
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                return tuple(o.clone() for o in compiled(*xs))
            return compiled(*xs)

        return run
