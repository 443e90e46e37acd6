"""matplotlib, when installed (the ``bench`` extra): every plot is optional, tables are the results."""

from __future__ import annotations

from pathlib import Path
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


def save_figure(plt: Any, fig: Any, path: Path, dpi: int = 130) -> None:
    """Lay out ``fig``, write it to ``path`` as PNG atomically (compiler.atomic), and close it."""
    import io

    from ditcache.compiler.atomic import write_atomic

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
