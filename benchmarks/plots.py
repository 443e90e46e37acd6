"""matplotlib, when installed (the ``bench`` extra): every plot is optional, tables are the results."""

from __future__ import annotations

from typing import Any


def pyplot(what: str) -> Any | None:
    """``matplotlib.pyplot`` on the Agg backend, or None (after saying which plot is skipped) when not installed."""
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: {what} not drawn (pip install 'ditcache[bench]')", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
