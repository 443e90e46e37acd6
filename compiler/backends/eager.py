"""The eager backend: graphs run as plain PyTorch, the reference every other backend is checked against."""

from __future__ import annotations

import torch


class EagerBackend:
    """Plain PyTorch: no artifacts; the graph's module is the callable."""

    name = "eager"
    writes_artifacts = False

    def unavailable_reason(self, settings) -> str | None:
        if settings.device == "cuda" and not torch.cuda.is_available():
            return "CUDA was requested but torch.cuda.is_available() is False"
        return None

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def build(self, graph, settings, directory):
        return []

    def load(self, graph, settings, files):
        if graph.module is None:
            raise ValueError(f"eager backend needs the model to run {graph.name}")
        return torch.no_grad()(graph.module)
