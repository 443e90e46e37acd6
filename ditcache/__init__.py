"""ditcache: compile Diffusion Transformer sampling with step caching (Δ-DiT, block caching).

The folders graphs/, compiler/, export/ and benchmarks/ install as ``ditcache.graphs`` and so on. Importing
``ditcache`` loads nothing else: ``ditcache.apply`` and the typed configs are imported on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (loaded on first attribute access)
_LAZY = {
    "apply": "ditcache.plugin",
    "AdaptiveConfig": "ditcache.graphs.configs",
    "BlockCacheConfig": "ditcache.graphs.configs",
    "DeltaDiTConfig": "ditcache.graphs.configs",
    "FullConfig": "ditcache.graphs.configs",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ditcache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
