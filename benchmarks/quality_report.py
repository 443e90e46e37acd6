"""The quality table's report: results.md and the FID / PSNR against MACs figure (benchmarks/eval_quality.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ditcache.benchmarks.plots import pyplot, save_figure


def plot_fid_vs_macs(rows: list[dict[str, Any]], floor: float | None, path: Path, title: str) -> None:
    plt = pyplot("the FID plot")
    if plt is None:
        return

    styles = {"full": ("k", "*"), "delta-dit": ("tab:blue", "o"), "delta-dit, measured b": ("tab:cyan", "o"),
              "block-cache": ("tab:green", "s"), "block-cache + closed-form s/s": ("tab:olive", "D"),
              "block-cache + trained s/s": ("tab:purple", "P"), "output-cache": ("tab:red", "x"),
              "error-driven block cache": ("tab:brown", "v"), "error-driven + closed-form s/s": ("tab:pink", "v"),
              "adaptive first-block": ("tab:orange", "^")}
    have_fid = any(r["fid"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if have_fid else 1, figsize=(11 if have_fid else 5.5, 4.2), squeeze=False)
    panels = ([("fid", "FID vs Fashion-MNIST test (lower is better)")] if have_fid else []) + \
        [("psnr_vs_full_db", "PSNR vs full schedule, dB (higher is closer)")]
    for ax, (key, label) in zip(axes[0], panels):
        for family, (color, marker) in styles.items():
            pts = [r for r in rows if r["family"] == family and r[key] is not None and np.isfinite(r[key])]
            if pts:
                ax.scatter([r["mac_fraction"] for r in pts], [r[key] for r in pts], c=color, marker=marker,
                           s=70 if marker == "*" else 40, label=family)
                if key == "fid" and all(r.get("fid_boot_std") is not None for r in pts):
                    ax.errorbar([r["mac_fraction"] for r in pts], [r[key] for r in pts],
                                yerr=[r["fid_boot_std"] for r in pts], fmt="none", ecolor=color, elinewidth=0.8)
                for r in pts:
                    ax.annotate(r["schedule"], (r["mac_fraction"], r[key]), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")
        if key == "fid" and floor is not None:
            ax.axhline(floor, color="gray", ls="--", lw=1, label=f"real vs real ({floor:.2f})")
        ax.set_xlabel("MACs relative to full (1 / theoretical speedup)")
        ax.set_ylabel(label)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(plt, fig, path)


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if value == float("inf") else f"{value:.{digits}f}"
    return str(value)


def pm(value: float | None, spread: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text + (f" ± {spread:.2f}" if spread is not None else "")


def markdown(record: dict[str, Any]) -> str:
    rows = record["results"]
    adaptive = [r for r in rows if r.get("macs_decided_at_run_time")]
    lines = [
        f"# Sample quality of caching schedules on {record['model']}",
        "",
        f"Command (from `{record['cwd']}`):",
        "",
        f"```\n{record['command']}\n```",
        "",
        f"- model `{record['model']}`, weights `{record['weights']['source']}` (sha256 "
        f"`{record['weights']['sha256'][:16]}`, checkpoint step {record['weights'].get('step', '?')})",
        f"- N = {record['n']} samples per schedule (classes balanced: sample i has class i % 10; seed of sample i "
        f"= SeedSequence([{record['seed']}, i]), so all schedules see the same noise), {record['steps']} DDIM steps, "
        f"guidance {record['guidance']}, batch {record['batch_size']}",
        f"- FID: {record['fid']['note']}" if record.get("fid") else "- FID: not computed (--no-fid)",
        f"- machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, torch "
        f"{record['machine']['torch']} with {record['machine']['torch_threads']} thread(s), no GPU; load average at "
        f"start {record['machine']['loadavg_1_5_15']}; total {record['total_s']:.0f} s",
        "",
        *([f"**Quick run: N = {record['n']} < 2000. FID is strongly biased upwards at small N (see the "
            f"real-vs-real floor); these are not the saved results.**", ""] if record["n"] < 2000 else []),
        "| schedule | family | params | FID | FID − full's | PSNR vs full (dB) | cosine vs full | GMACs/img | MACs | "
        "speedup (MACs) | sampling s | wall speedup |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['schedule']} | {r['family']} ({r['cache']}) | {r['params']} | {pm(r['fid'], r.get('fid_boot_std'))} | "
            f"{pm(r.get('fid_delta_vs_full'), r.get('fid_delta_boot_std'), signed=True)} | "
            f"{fmt(r['psnr_vs_full_db'])} | {fmt(r['cosine_vs_full'], 5)} | {fmt(r['gmacs_per_image'], 3)} | "
            f"{fmt(r['mac_fraction'], 3)} | {fmt(r['theoretical_speedup'])}x | {fmt(r['sampling_s'], 1)} | "
            f"{fmt(r['wall_speedup'])}x |")
    if record.get("fid"):
        lines += ["", f"Real-vs-real floor (N train images vs the same N test images): FID "
                      f"{record['fid']['floor']:.3f}. FID at small N is biased upwards; compare schedules at equal N. "
                      "± is the standard deviation over a paired bootstrap of the generated samples (same resampled "
                      "indices for every schedule; reference fixed): for FID itself, and for the difference to the "
                      "full schedule's FID, which is what separates two schedules."]
    lines += [
        "",
        "PSNR is over all pixels of all N images (pooled MSE, images in [0, 1]; '-' for the full schedule itself, "
        "the reference); cosine is the mean over samples of "
        "the cosine similarity of the final samples, both against the full schedule on the same noise. Speedup "
        "(MACs) is `Plan.theoretical_speedup` from the analytic cost model; wall speedup is measured on a shared "
        "CPU and only indicative.",
        *(["", "Adaptive rows decide at run time, per sampling batch (a step replays when every row of the batch is "
               "under the threshold): they sample in batches of " + str(adaptive[0]["batch_size"]) + " (the "
               "calibration's), and their MACs are the mean over samples of their batch's decided run (the replayed "
               "steps are in results.json, `replayed_steps_histogram`)."] if adaptive else []),
        "",
        "Figures: `fid_vs_macs.png`; per-schedule class grids `samples_<schedule>.png` (rows: classes 0-9, "
        "columns: the first samples of each class, same noise in every file).",
        "",
    ]
    return "\n".join(lines)
