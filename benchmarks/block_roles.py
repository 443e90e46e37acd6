#!/usr/bin/env python
"""Δ-DiT's Table 1 on dit-fmnist: what do the front, middle and back blocks contribute?

Setting (fixed, stated in the results): 20 DDIM steps, classifier-free guidance (``--guidance``), N
class-balanced samples with the same per-sample noise as benchmarks/eval_quality.py. One range of k
consecutive blocks (default k = 4 of 12: front [0, 4), middle [4, 8), back [8, 12)) is cached with
Δ-Cache (``cache: offset``: the range's recorded out - in is added to its current input) on alternate
steps: steps s % 2 == 0 compute everything and record, steps s % 2 == 1 replay (``--interval`` changes
the period), for the whole run. The three settings cost the same MACs.

Measures (each image in [0, 1], 28 x 28), averaged over the N images and compared with the full schedule:

* outline (the paper's): **Sobel average gradient** ``mean sqrt(gx^2 + gy^2)`` over the interior pixels, and
  **DFT high-frequency energy ratio**: share of the (mean-removed) spectrum's energy at radial frequencies
  above ``HF_CUTOFF`` = 0.25 cycles/pixel (half the Nyquist frequency);
* detail: the paper uses PIQE, which has no offline Python implementation here. Used instead, and named as
  **proxies**: **Laplacian variance** (variance of the 4-neighbour Laplacian, the usual no-reference
  sharpness/detail measure; it also rises with noise, so read it with the next one) and, against the full
  schedule on the same noise, the **detail error** ``||D(x) - D(full)|| / ||D(full)||`` with
  ``D(x) = x - G_sigma(x)`` (the high-frequency residual of a Gaussian blur, sigma = 1 px) next to the
  **outline error** ``||G_sigma(x) - G_sigma(full)|| / ||G_sigma(full)||`` (the low-pass part).

"Front = outline" holds here if caching the front range moves the outline measures (and the low-pass
error) more than caching the back range; "back = detail" if caching the back range moves the detail
measures (and the high-frequency error) more than caching the front. Differences come with paired 95%
confidence intervals over the N images.

Writes ``block_roles.json``, ``block_roles.md``, ``samples.png`` and ``measures.png`` to ``--out``.

Examples:
    python benchmarks/block_roles.py                       # N = 200, k = 4, guidance as eval_quality
    python benchmarks/block_roles.py --n 50 --k 6 --out /tmp/roles --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ditcache.compiler.atomic import write_atomic

from ditcache.benchmarks.paths import repo_relative
from ditcache.benchmarks.plots import pyplot, save_figure

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "block_roles_fmnist"
HF_CUTOFF = 0.25  # cycles / pixel
BLUR_SIGMA = 1.0  # px
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)


# ---- measures (numpy, any (..., H, W) batch) -----------------------------------------------------
def _as_batch(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float64)
    if x.ndim == 4:  # (B, C, H, W) -> (B*C, H, W)
        x = x.reshape(-1, *x.shape[-2:])
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (H, W), (B, H, W) or (B, C, H, W) images, got {np.shape(images)}")
    return x


def _conv3_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    h, w = x.shape[-2:]
    return sum(k[i, j] * x[..., i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3) if k[i, j])


def sobel_average_gradient(images: np.ndarray) -> np.ndarray:
    """Per image: mean over interior pixels of the Sobel gradient magnitude sqrt(gx^2 + gy^2). Flat -> 0."""
    x = _as_batch(images)
    gx, gy = _conv3_valid(x, SOBEL_X), _conv3_valid(x, SOBEL_X.T)
    return np.sqrt(gx**2 + gy**2).mean(axis=(-2, -1))


def hf_energy_ratio(images: np.ndarray, cutoff: float = HF_CUTOFF) -> np.ndarray:
    """Per image: share of the mean-removed DFT energy at radial frequency > ``cutoff`` cycles/pixel
    (0 for a flat image)."""
    x = _as_batch(images)
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2
    fy, fx = np.fft.fftfreq(x.shape[-2]), np.fft.fftfreq(x.shape[-1])
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    total = power.sum(axis=(-2, -1))
    high = power[..., radius > cutoff].sum(-1)
    return np.where(total > 0, high / np.where(total > 0, total, 1), 0.0)


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Per image: variance of the 4-neighbour Laplacian over interior pixels (a no-reference detail proxy)."""
    lap = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)
    return _conv3_valid(_as_batch(images), lap).var(axis=(-2, -1))


def gaussian_blur(images: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Separable Gaussian blur with reflect padding (radius 3 sigma)."""
    x = _as_batch(images)
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-t**2 / (2 * sigma**2))
    k /= k.sum()
    pad = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    h, w = x.shape[-2:]
    rows = sum(k[i] * pad[:, i:i + h, :] for i in range(len(k)))
    return sum(k[j] * rows[:, :, j:j + w] for j in range(len(k)))


def band_errors(images: np.ndarray, reference: np.ndarray, sigma: float = BLUR_SIGMA) -> dict[str, np.ndarray]:
    """Per image: relative L2 error of the low-pass (outline) and high-pass (detail) parts against a reference."""
    x, r = _as_batch(images), _as_batch(reference)
    lx, lr = gaussian_blur(x, sigma), gaussian_blur(r, sigma)

    def rel(a, b):
        return np.sqrt(((a - b) ** 2).sum(axis=(-2, -1))) / np.maximum(np.sqrt((b**2).sum(axis=(-2, -1))), 1e-12)

    return {"outline_error": rel(lx, lr), "detail_error": rel(x - lx, r - lr)}


MEASURES = {  # name -> (kind, function of images, what "worse" means for the paper's reading)
    "sobel_avg_gradient": ("outline", sobel_average_gradient),
    "dft_hf_energy_ratio": ("outline", hf_energy_ratio),
    "laplacian_variance": ("detail proxy", laplacian_variance),
}


def paired(diff: np.ndarray) -> dict[str, float]:
    """Mean and 95% half-width of per-image differences."""
    d = np.asarray(diff, np.float64)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci95": float(half)}


# ---- the experiment -----------------------------------------------------------------------------
def role_ranges(num_blocks: int, k: int) -> dict[str, tuple[int, int]]:
    if not 1 <= k <= num_blocks // 2:
        raise ValueError(f"k must be in 1..{num_blocks // 2} so front and back do not overlap (got {k})")
    mid = (num_blocks - k) // 2
    return {"front": (0, k), "middle": (mid, mid + k), "back": (num_blocks - k, num_blocks)}


def role_plan(num_blocks: int, steps: int, name: str, start: int, end: int, interval: int):
    from ditcache.graphs.plan import CacheRange, Plan

    replays = [set() if s % interval == 0 else {name} for s in range(steps)]
    return Plan.from_replays(num_blocks, [CacheRange(name, start, end)], replays, cache="offset",
                             schedule={"kind": "block-roles", "steps": steps, "range": [start, end],
                                       "interval": interval, "cache": "offset"})


def sample_images(model, spec, plan, n: int, seed: int, guidance: float, batch: int, progress: bool,
                  desc: str) -> np.ndarray:
    from ditcache.benchmarks.eval_quality import SCHEDULER, STEPS, balanced_classes, sample_seed
    from ditcache.images import decode
    from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest

    dispatcher = eager_dispatcher(model, spec, plan)
    labels = balanced_classes(n, spec.num_classes)
    out = []
    starts = range(0, n, batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{desc:<8}", unit="batch")
    for start in starts:
        stop = min(start + batch, n)
        request = SampleRequest(tuple(labels[start:stop]), STEPS, guidance, seed, SCHEDULER,
                                sample_seeds=tuple(sample_seed(seed, i) for i in range(start, stop)))
        out.append(decode(sample_with_plan(dispatcher, spec, request), spec).numpy())
    return np.concatenate(out)[:, 0]  # (N, H, W)


def per_image(images: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per configuration, per image: every measure, and (cached configurations) the band errors vs full."""
    full = images["full"]
    values: dict[str, dict[str, np.ndarray]] = {}
    for name, x in images.items():
        values[name] = {m: fn(x) for m, (_, fn) in MEASURES.items()}
        if name != "full":
            values[name].update(band_errors(x, full))
            values[name]["mse_vs_full"] = ((x - full) ** 2).reshape(len(x), -1).mean(1)
    return values


def analyse(images: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per configuration: each measure's mean, its change vs full (paired, with CI), and band errors."""
    values = per_image(images)
    base = values["full"]
    out: dict[str, Any] = {}
    for name, v in values.items():
        entry: dict[str, Any] = {}
        for m, (kind, _) in MEASURES.items():
            diff = paired(v[m] - base[m])
            entry[m] = {"kind": kind, "mean": float(v[m].mean()), "delta_vs_full": diff,
                        "relative_change_pct": 100 * diff["mean"] / float(base[m].mean()) if base[m].mean() else None}
        if name != "full":
            for m in ("outline_error", "detail_error"):
                entry[m] = {"kind": "vs full", **paired(v[m])}
            entry["detail_to_outline_error"] = float(v["detail_error"].mean() / max(v["outline_error"].mean(), 1e-30))
            entry["psnr_vs_full_db"] = float(10 * np.log10(1 / max(v["mse_vs_full"].mean(), 1e-30)))
        out[name] = entry
    return out


def _check(diff: np.ndarray) -> dict[str, Any]:
    """A per-image paired difference that should be > 0 for the paper's claim: mean, CI, and the call."""
    d = paired(diff)
    call = "yes" if d["mean"] - d["ci95"] > 0 else ("no" if d["mean"] + d["ci95"] < 0 else
                                                      ("yes (not significant)" if d["mean"] > 0 else "no (not significant)"))
    return {**d, "call": call}


def verdict(images: dict[str, np.ndarray]) -> dict[str, Any]:
    """Whether "front = outline" and "back = detail" hold: per-image paired comparisons of caching the front
    range with caching the back range, each a difference that is > 0 where the paper's reading holds."""
    v = per_image(images)
    full, front, back = v["full"], v["front"], v["back"]
    checks = {
        # the paper (Table 1): caching the front lowers the outline measures, more than caching the back does
        "Sobel avg gradient: caching front lowers it more than caching back":
            _check(back["sobel_avg_gradient"] - front["sobel_avg_gradient"]),
        "DFT HF energy ratio: caching front lowers it more than caching back":
            _check(back["dft_hf_energy_ratio"] - front["dft_hf_energy_ratio"]),
        "outline error vs full (low-pass): front > back": _check(front["outline_error"] - back["outline_error"]),
        # the paper: caching the back hurts detail (PIQE up) more; proxies
        "Laplacian variance (proxy): caching back moves it more than caching front":
            _check(np.abs(back["laplacian_variance"] - full["laplacian_variance"])
                   - np.abs(front["laplacian_variance"] - full["laplacian_variance"])),
        "detail error vs full (high-pass, proxy): back > front": _check(back["detail_error"] - front["detail_error"]),
    }
    relative = {  # the error each range causes, split into bands: is back's error more detail-heavy than front's?
        "detail share of the error: back > front": _check(
            back["detail_error"] / (back["detail_error"] + back["outline_error"] + 1e-30)
            - front["detail_error"] / (front["detail_error"] + front["outline_error"] + 1e-30)),
    }

    def summary(keys):
        calls = [checks[k]["call"] for k in keys]
        if all(c == "yes" for c in calls):
            return "holds"
        if all(c == "no" for c in calls):
            return "does not hold"
        if all(c.startswith("no") for c in calls):
            return "does not hold (some differences not significant)"
        if all(c.startswith("yes") for c in calls):
            return "holds (some differences not significant)"
        return "mixed"

    keys = list(checks)
    return {"checks": checks, "relative": relative, "front_is_outline": summary(keys[:3]),
            "back_is_detail": summary(keys[3:])}


def _figures(images: dict[str, np.ndarray], stats: dict[str, Any], out: Path, title: str) -> None:
    import torch

    from ditcache.images import grid, save_png, to_uint8

    n = len(images["full"])
    cols = [c for c in range(min(10, n))]  # one sample per class
    rows = []
    for name in images:
        rows.append(images[name][cols])
    for name in images:
        if name != "full":
            rows.append(np.clip(np.abs(images[name][cols] - images["full"][cols]) * 4, 0, 1))
    tiles = np.concatenate(rows)[:, None]
    save_png(grid(to_uint8(torch.from_numpy(tiles.astype(np.float32))), columns=len(cols)), out / "samples.png",
             scale=3)

    plt = pyplot("the block-role plot")
    if plt is None:
        return

    configs = [k for k in images if k != "full"]
    panels = [("sobel_avg_gradient", "Sobel avg gradient\nchange vs full (%)", True),
              ("dft_hf_energy_ratio", "DFT HF energy ratio\nchange vs full (%)", True),
              ("laplacian_variance", "Laplacian variance (proxy)\nchange vs full (%)", True),
              ("outline_error", "outline error vs full\n(low-pass, rel. L2)", False),
              ("detail_error", "detail error vs full\n(high-pass, rel. L2)", False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    colors = {"front": "tab:blue", "middle": "tab:gray", "back": "tab:orange"}
    for ax, (m, label, relative) in zip(axes, panels):
        vals, errs = [], []
        for c in configs:
            e = stats[c][m]
            if relative:
                base = stats["full"][m]["mean"]
                vals.append(100 * e["delta_vs_full"]["mean"] / base if base else 0)
                errs.append(100 * e["delta_vs_full"]["ci95"] / base if base else 0)
            else:
                vals.append(e["mean"])
                errs.append(e["ci95"])
        ax.bar(configs, vals, yerr=errs, color=[colors.get(c, "tab:green") for c in configs], capsize=3)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(label, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=8)
    save_figure(plt, fig, out / "measures.png")


def _markdown(record: dict[str, Any]) -> str:
    s, v = record["stats"], record["verdict"]
    configs = list(s)
    lines = [
        "# Block roles on dit-fmnist (Δ-DiT Table 1 analysis)", "",
        f"Command (from `{record['cwd']}`):", "", f"```\n{record['command']}\n```", "",
        f"- weights `{record['weights']['source']}` (sha256 `{record['weights']['sha256'][:16]}`, checkpoint step "
        f"{record['weights'].get('step', '?')})",
        f"- setting: {record['setting']}",
        f"- N = {record['n']} images per configuration, same noise for all; machine {record['machine']}; "
        f"{record['total_s']:.0f} s", "",
        "| config | blocks cached | Sobel avg gradient | Δ% | DFT HF ratio | Δ% | Laplacian var (proxy) | Δ% | "
        "outline err vs full | detail err vs full | PSNR vs full |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in configs:
        e = s[c]
        rng = record["ranges"].get(c)

        def pct(m):
            p = e[m]["relative_change_pct"]
            ci = 100 * e[m]["delta_vs_full"]["ci95"] / s["full"][m]["mean"] if s["full"][m]["mean"] else 0
            return "-" if c == "full" else f"{p:+.1f} ± {ci:.1f}"

        errs = ("-", "-", "-") if c == "full" else (f"{e['outline_error']['mean']:.4f}", f"{e['detail_error']['mean']:.4f}",
                                                      f"{e['psnr_vs_full_db']:.2f} dB")
        lines.append(f"| {c} | {'-' if rng is None else f'[{rng[0]}, {rng[1]})'} | {e['sobel_avg_gradient']['mean']:.4f} | "
                     f"{pct('sobel_avg_gradient')} | {e['dft_hf_energy_ratio']['mean']:.4f} | {pct('dft_hf_energy_ratio')} | "
                     f"{e['laplacian_variance']['mean']:.5f} | {pct('laplacian_variance')} | {errs[0]} | {errs[1]} | {errs[2]} |")
    lines += ["", "Δ%: change of the per-image measure vs the full schedule on the same noise, mean ± 95% CI (paired).",
              "", "## Verdict", ""]
    lines += ["Each line: a per-image paired difference that is > 0 where the paper's reading holds, mean ± 95% CI; "
              "'yes'/'no' when the CI excludes 0.", ""]
    for k, c in {**v["checks"], **v["relative"]}.items():
        lines.append(f"- {k}: **{c['call']}** ({c['mean']:+.4g} ± {c['ci95']:.2g})")
    cached = [c for c in configs if c != "full"]
    most = max(cached, key=lambda c: -s[c]["psnr_vs_full_db"])
    smooth = min(cached, key=lambda c: s[c]["dft_hf_energy_ratio"]["delta_vs_full"]["mean"])
    lines += ["", "In numbers: caching " + ", ".join(f"{c} gives {s[c]['psnr_vs_full_db']:.1f} dB" for c in cached)
              + f" against the full schedule, so the {most} range changes the image most; the {smooth} range "
              f"lowers the DFT high-frequency share most ({s[smooth]['dft_hf_energy_ratio']['relative_change_pct']:+.1f}%)."]
    lines += ["", f"**Front = outline: {v['front_is_outline']}. Back = detail: {v['back_is_detail']}** "
                  f"(on this model, this checkpoint and this setting; the detail measures are proxies for PIQE). "
                  f"The last line is relative: whatever the size of the error each range causes, the share of it "
                  f"in the high-frequency band.", "",
              "Measures: Sobel average gradient = mean sqrt(gx² + gy²) over interior pixels; DFT HF ratio = share of "
              f"mean-removed spectral energy above {HF_CUTOFF} cycles/pixel; Laplacian variance = variance of the "
              "4-neighbour Laplacian (no-reference detail/sharpness proxy; noise raises it too); outline / detail error "
              f"= relative L2 distance to the full schedule's image of the Gaussian-blurred (σ = {BLUR_SIGMA} px) part / "
              "of the residual image − blur. PIQE, the paper's detail metric, is not available offline; these are proxies.",
              "", "Figures: `samples.png` (rows: full, then each config, then |config − full| × 4; one sample per class), "
              "`measures.png`.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from ditcache.benchmarks.eval_quality import DEFAULT_GUIDANCE

    p = argparse.ArgumentParser(
        description="Δ-DiT Table 1 on dit-fmnist: cache the front, middle or back k blocks on alternate steps and "
                    "measure outlines (Sobel gradient, DFT high-frequency energy) and detail (proxies) vs full.",
        epilog="examples:\n  python benchmarks/block_roles.py\n"
               "  python benchmarks/block_roles.py --n 50 --k 6 --out /tmp/roles --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="images per configuration (class-balanced; default 200)")
    p.add_argument("--k", type=int, default=4, help="blocks per cached range (default 4 of 12)")
    p.add_argument("--interval", type=int, default=2, help="full step every INTERVAL steps, cached in between "
                                                           "(default 2: alternate steps)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help=f"guidance (default {DEFAULT_GUIDANCE}, "
                                                                            "as eval_quality)")
    p.add_argument("--seed", type=int, default=0, help="global seed (sample i: SeedSequence([seed, i]))")
    p.add_argument("--batch-size", type=int, default=50, help="images per sampling batch")
    p.add_argument("--weights", default=None, help="weights (default: the shipped dit-fmnist)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results folder (default benchmarks/results/block_roles_fmnist)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true", help="print the record as JSON on stdout (logs to stderr)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from ditcache.benchmarks.eval_quality import MODEL, STEPS, machine_info
    from ditcache.graphs import get_spec, load_model

    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr, flush=True)) if args.json else print
    torch.set_num_threads(args.threads)
    spec = get_spec(MODEL)
    try:
        ranges = role_ranges(spec.num_blocks, args.k)
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    if args.interval < 2 or args.n < 2:
        log("error: --interval must be >= 2 (1 caches nothing) and --n >= 2")
        return 2
    started = time.perf_counter()
    model, info = load_model(spec, args.weights)
    weights = {"source": info.source, "sha256": info.sha256}
    training = Path(info.source).parent / "training.json"
    if training.is_file():
        weights["step"] = json.loads(training.read_text()).get("step")
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs import full_schedule

    plans = {"full": plan_for(full_schedule(STEPS), spec)}
    plans.update({name: role_plan(spec.num_blocks, STEPS, name, a, b, args.interval) for name, (a, b) in ranges.items()})
    setting = (f"{STEPS} DDIM steps, guidance {args.guidance}; k = {args.k} of {spec.num_blocks} blocks cached with "
               f"Δ-Cache (offset) at steps s % {args.interval} != 0 for the whole run (computed and recorded at "
               f"s % {args.interval} == 0); ranges " + ", ".join(f"{n} [{a}, {b})" for n, (a, b) in ranges.items()))
    log(f"block roles: {setting}; N={args.n}; weights step {weights.get('step', '?')}")
    images = {name: sample_images(model, spec, plan, args.n, args.seed, args.guidance, args.batch_size,
                                  not args.no_progress, name) for name, plan in plans.items()}
    stats = analyse(images)
    result = verdict(images)
    machine = machine_info()
    record = {
        "command": "python " + shlex.join([sys.argv[0]] + sys.argv[1:] if argv is None
                                          else ["benchmarks/block_roles.py", *argv]),
        "cwd": os.getcwd(), "model": MODEL, "weights": weights, "n": args.n, "k": args.k, "interval": args.interval,
        "guidance": args.guidance, "seed": args.seed, "setting": setting, "ranges": ranges,
        "machine": f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, {args.threads} thread(s)",
        "total_s": time.perf_counter() - started, "stats": stats, "verdict": result,
        "measures_note": "detail measures are proxies for PIQE (Laplacian variance, high-pass error vs full)",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "block_roles.json", repo_relative(json.dumps(record, indent=2) + "\n"))
    write_atomic(out / "block_roles.md", repo_relative(_markdown(record)))
    _figures(images, stats, out, f"{MODEL} step {weights.get('step', '?')}: k={args.k} blocks cached (offset) every "
                                 f"step s % {args.interval} != 0, N={args.n}")
    for name in ranges:
        e = stats[name]
        log(f"{name:<7} Sobel {e['sobel_avg_gradient']['relative_change_pct']:+6.1f}%  DFT-HF "
            f"{e['dft_hf_energy_ratio']['relative_change_pct']:+6.1f}%  LapVar {e['laplacian_variance']['relative_change_pct']:+6.1f}%  "
            f"outline err {e['outline_error']['mean']:.4f}  detail err {e['detail_error']['mean']:.4f}  "
            f"PSNR {e['psnr_vs_full_db']:.2f} dB")
    log(f"front = outline: {result['front_is_outline']}; back = detail: {result['back_is_detail']}")
    log(f"wrote {out}/block_roles.md, block_roles.json, samples.png, measures.png")
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
