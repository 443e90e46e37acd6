"""The peer comparison's pareto plot (compare_peers' pareto.png): quality against measured speedup, per family."""

from __future__ import annotations

from pathlib import Path
from typing import Any


from .plots import pyplot, save_figure

STYLES = {"ditcache": ("tab:blue", "o"), "diffusers FirstBlockCache": ("tab:orange", "s"),
          "diffusers PyramidAttentionBroadcast": ("tab:green", "^"), "diffusers FasterCache": ("tab:olive", "v"),
          "diffusers MagCache": ("tab:purple", "D"), "diffusers TaylorSeer": ("tab:brown", "P"),
          "diffusers SeaCache": ("tab:pink", "X"), "cache-dit DBCache": ("tab:red", "*"),
          "SmoothCache": ("tab:cyan", "h")}


def plot_pareto(record: dict[str, Any], path: Path) -> None:
    """Quality vs measured speedup for every method: FID (if measured) and PSNR vs measured eager speedup; compiled
    speedups as open markers."""
    plt = pyplot("the pareto plot")
    if plt is None:
        return

    rows = [r for r in record["rows"] if r["eager_speedup"] is not None]
    if record.get("random_weights"):  # no meaningful quality: how much of the skipped compute turns into time
        panels = [("mac_speedup", "MACs x from the counted blocks (dotted: speedup = MACs x)")]
    else:
        panels = ([("fid", "FID (lower is better)")] if any(r["fid"] is not None for r in rows) else []) + \
            [("psnr_vs_full_db", "PSNR vs full, dB (higher is closer)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for family, (color, marker) in STYLES.items():
            pts = [r for r in rows if r["family"] == family and r[key] is not None]
            if not pts:
                continue
            ax.scatter([r["eager_speedup"] for r in pts], [r[key] for r in pts], c=color, marker=marker, s=45,
                       label=f"{family} (eager)")
            comp = [r for r in pts if r["compiled_speedup"] is not None]
            if comp:
                ax.scatter([r["compiled_speedup"] for r in comp], [r[key] for r in comp], facecolors="none",
                           edgecolors=color, marker=marker, s=60)
                for r in comp:
                    ax.plot([r["eager_speedup"], r["compiled_speedup"]], [r[key]] * 2, color=color, lw=0.6, ls=":")
            for r in pts:
                ax.annotate(r["name"], (r["eager_speedup"], r[key]), fontsize=5.5, xytext=(3, 2),
                            textcoords="offset points")
        if key == "mac_speedup":
            top = max([r["mac_speedup"] for r in rows if r["mac_speedup"]] + [1.0])
            ax.plot([1, top], [1, top], color="gray", ls=":", lw=0.8)
        if key == "fid" and record.get("fid"):
            full = next((r["fid"] for r in rows if r["name"] == "full"), None)
            if full is not None:
                ax.axhline(full, color="gray", ls="--", lw=0.8, label="full schedule")
        ax.set_xlabel("measured speedup over the full row (filled: eager; open: torch.compile vs compiled full)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"{record['name']}: {record['model']}, {record['steps']} {record['scheduler']} steps, guidance "
                 f"{record['guidance']}", fontsize=9)
    save_figure(plt, fig, path)
