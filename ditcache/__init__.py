"""ditcache: compile Diffusion Transformer sampling with step caching (Δ-DiT, block caching).

The folders graphs/, compiler/, export/ and benchmarks/ install as ``ditcache.graphs`` and so on.
"""

__version__ = "0.1.0"

from .plugin import apply  # noqa: E402

__all__ = ["apply", "__version__"]
