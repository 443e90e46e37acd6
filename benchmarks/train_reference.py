#!/usr/bin/env python
"""Train ditcache's reference models: a small class-conditional DiT (or U-Net) on Fashion-MNIST.

The model is a diffusers ``DiTTransformer2DModel`` (adaLN-zero blocks, the same block type as
DiT-XL/2) on 28x28x1 pixels, patch 4 (7x7 = 49 tokens), 12 blocks, width 128 (4 heads x 32),
10 classes (+ null class 10 for classifier-free guidance, added by diffusers' LabelEmbedding,
which drops labels with p=0.1 in train mode). Epsilon prediction, DDPM schedule with 1000
steps and linear betas 1e-4..0.02 (as in DiT), uniform t, MSE loss, AdamW, EMA of weights.

``--arch unet`` trains ``unet-fmnist`` instead (config in graphs/unet_sizes.py): a diffusers
``UNet2DConditionModel`` on the same 28x28x1 pixels (levels 28/14/7, channels 32/64/128, self-attention
at 14x14 and 7x7, 2.4M parameters), class-conditioned by ``num_class_embeds=11`` (10 classes + null
class 10); nn.Embedding has no built-in label dropout, so the script drops labels to 10 with p=0.1.
Same data, noise schedule, loss, optimizer and EMA; its defaults write graphs/weights/unet-fmnist/ and
benchmarks/results/train_unet_fmnist/.

Checkpoints (EMA weights) are written atomically as a diffusers folder:
    <out-dir>/config.json, diffusion_pytorch_model.safetensors, scheduler_config.json,
    training.json

Examples:
    # train until 13:55 UTC (or 20000 steps), checkpoint every 500 steps, adaptive 1/2 threads
    python benchmarks/train_reference.py --deadline 13:55 --max-steps 20000 --ckpt-every 500 \\
        --seed 0 --threads 0 --overwrite-log

    # quick smoke test without touching the shipped weights
    python benchmarks/train_reference.py --max-steps 20 --out-dir /tmp/dit-smoke \\
        --results-dir /tmp/dit-smoke-results

    # sample one image per class from the latest checkpoint (DDIM 50 steps, guidance 4)
    python benchmarks/train_reference.py --sample-only

    # the U-Net reference model on one thread (the run that made graphs/weights/unet-fmnist)
    nice -n 19 python benchmarks/train_reference.py --arch unet --threads 1 --batch-size 32 --lr 1.5e-3 \\
        --warmup-steps 100 --ema-decay 0.998 --max-steps 4000 --ckpt-every 200 --seed 0 --overwrite-log

    # ...continued from its step-1800 EMA checkpoint when that run was cut off
    python benchmarks/train_reference.py --arch unet --threads 2 --batch-size 32 --lr 1.5e-3 \\
        --warmup-steps 50 --ema-decay 0.998 --max-steps 4000 --ckpt-every 200 --seed 1 --continue-from-ema

The data reader ``load_fashion_mnist(split)`` is importable by other benchmark scripts.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import gzip
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ditcache.compiler.atomic import atomic_path

from ditcache.benchmarks.plots import pyplot
from ditcache.benchmarks.train_state import (LR_SCHEDULES, LRRule, default_state_file, keep_snapshot,
                                              load_state, save_state)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUT_DIR = str(REPO_ROOT / "graphs" / "weights" / "dit-fmnist")
DEFAULT_RESULTS_DIR = str(REPO_ROOT / "benchmarks" / "results" / "train_dit_fmnist")
ARCHS = ("dit", "unet")
TITLES = {"dit": "DiT (12x128, p4) on Fashion-MNIST", "unet": "U-Net (32/64/128, attention at 14x14 and 7x7) on Fashion-MNIST"}

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
NUM_CLASSES = 10
NULL_CLASS = 10  # index appended by diffusers' LabelEmbedding when dropout_prob > 0
LABEL_DROPOUT = 0.1  # classifier-free guidance training: labels replaced by NULL_CLASS with this probability

MODEL_CONFIG = dict(
    sample_size=28,
    patch_size=4,
    in_channels=1,
    out_channels=1,
    num_layers=12,
    num_attention_heads=4,
    attention_head_dim=32,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
)
SCHEDULE_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=1e-4,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
    clip_sample=False,
)

_INSTALL_HINT = (
    "Fashion-MNIST idx files not found in {d!r}. Install them with\n"
    "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
    "(files land in /usr/share/datasets/fashion-mnist/) or pass --data-dir pointing at a folder\n"
    "containing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-*."
)


# --------------------------------------------------------------------------- data
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0] * 256 + data[1], data[2], data[3]
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike = DEFAULT_DATA_DIR):
    """Return (images uint8 (N, 28, 28), labels int64 (N,)) for split 'train' or 'test'."""
    prefix = {"train": "train", "test": "t10k"}[split]
    d = Path(data_dir)
    out = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for name in (f"{prefix}-{kind}.gz", f"{prefix}-{kind}"):
            if (d / name).exists():
                out.append(_read_idx(d / name))
                break
        else:
            raise FileNotFoundError(_INSTALL_HINT.format(d=str(d)))
    images, labels = out
    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------- helpers
def parse_deadline(s: str | None) -> float | None:
    """'HH:MM' (UTC, today; tomorrow if already past) or ISO datetime -> unix time."""
    if not s:
        return None
    now = _dt.datetime.now(_dt.timezone.utc)
    if len(s) <= 5 and ":" in s:
        hh, mm = (int(x) for x in s.split(":"))
        t = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if t < now - _dt.timedelta(hours=12):
            t += _dt.timedelta(days=1)
        return t.timestamp()
    t = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def model_config(arch: str = "dit") -> dict:
    """diffusers kwargs of the reference model of ``arch``."""
    if arch == "unet":
        from ditcache.graphs.unet_sizes import UNET_FMNIST
        return dict(UNET_FMNIST)
    return dict(MODEL_CONFIG)


def model_class(arch: str = "dit"):
    import diffusers
    return diffusers.UNet2DConditionModel if arch == "unet" else diffusers.DiTTransformer2DModel


def build_model(arch: str = "dit"):
    return model_class(arch)(**model_config(arch))


def denoise(model, arch: str, x, t, labels):
    """The model's epsilon for noisy ``x`` at timesteps ``t`` and class ``labels`` (null class 10 allowed)."""
    if arch == "unet":
        return model(x, t, None, class_labels=labels).sample  # no text: encoder_hidden_states unused
    return model(x, timestep=t, class_labels=labels).sample


def default_dirs(arch: str) -> tuple[str, str]:
    """(weights folder, results folder) of ``arch``'s reference model."""
    if arch == "unet":
        return (str(REPO_ROOT / "graphs" / "weights" / "unet-fmnist"),
                str(REPO_ROOT / "benchmarks" / "results" / "train_unet_fmnist"))
    return DEFAULT_OUT_DIR, DEFAULT_RESULTS_DIR


def build_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler(**SCHEDULE_CONFIG)


def save_checkpoint(ema_model, scheduler, out_dir: str, meta: dict) -> None:
    """Write the diffusers folder to a temp dir, then swap it in with renames."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ema_model.save_pretrained(str(tmp), safe_serialization=True)
    scheduler.save_config(str(tmp))
    with open(tmp / "training.json", "w") as f:
        json.dump(meta, f, indent=2)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def load_ema_checkpoint(model, out_dir: str) -> tuple[int, dict]:
    """Load ``out_dir``'s EMA weights into ``model``; (its step, a record of the earlier run)."""
    from safetensors.torch import load_file

    folder = Path(out_dir)
    meta_path, weights_path = folder / "training.json", folder / "diffusion_pytorch_model.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise SystemExit(f"--continue-from-ema: {folder} has no training.json / safetensors checkpoint; "
                         "train without --continue-from-ema first")
    meta = json.loads(meta_path.read_text())
    model.load_state_dict(load_file(str(weights_path)))
    earlier = meta.get("continued_from") or []
    record = [*earlier, dict(step=meta["step"], command=meta.get("command"), wall_seconds=meta.get("wall_seconds"),
                             saved_utc=meta.get("saved_utc"))]
    return int(meta["step"]), record


def plot_losses(csv_path: Path, png_path: Path, title: str = "DiT (12x128, p4) on Fashion-MNIST") -> None:
    plt = pyplot("the loss curve")
    if plt is None:
        return
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    step = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    ema = [float(r["ema_loss"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step, loss, lw=0.5, alpha=0.4, label="loss (mean over log interval)")
    ax.plot(step, ema, lw=1.5, label="EMA of loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("epsilon MSE")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- sampling
def sample_grid(model_dir: str, results_dir: str, guidance: float = 4.0, steps: int = 50,
                seed: int = 0, tag: str | None = None, arch: str = "dit") -> Path:
    """Sample one image per class (DDIM, CFG with null label 10) and save a PNG grid."""
    import torch
    from diffusers import DDIMScheduler

    model = model_class(arch).from_pretrained(model_dir).eval()
    sched = DDIMScheduler.from_pretrained(model_dir)
    sched.set_timesteps(steps)
    meta_path = Path(model_dir) / "training.json"
    step_tag = tag
    if step_tag is None:
        step_tag = str(json.load(open(meta_path)).get("step", "x")) if meta_path.exists() else "x"

    g = torch.Generator().manual_seed(seed)
    n = NUM_CLASSES
    x = torch.randn(n, 1, 28, 28, generator=g)
    labels = torch.arange(n)
    labels_in = torch.cat([labels, torch.full_like(labels, NULL_CLASS)])
    with torch.no_grad():
        for t in sched.timesteps:
            xin = torch.cat([x, x])
            tt = torch.full((2 * n,), int(t), dtype=torch.long)
            eps = denoise(model, arch, xin, tt, labels_in)
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            x = sched.step(eps, t, x).prev_sample
    imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1).numpy()

    # grid: one row, each cell 28x28 scaled x4 with 1-px gap
    scale, gap = 4, 4
    H = 28 * scale
    grid = np.full((H, n * (H + gap) - gap), 255, dtype=np.uint8)
    for i in range(n):
        big = np.kron(imgs[i], np.ones((scale, scale), dtype=np.uint8))
        grid[:, i * (H + gap): i * (H + gap) + H] = big
    out = Path(results_dir) / f"samples_{step_tag}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plt = pyplot("the labelled sample strip (saved unlabelled)")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(n * 1.3, 1.9))
        ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([i * (H + gap) + H / 2 for i in range(n)])
        ax.set_xticklabels(CLASS_NAMES, fontsize=7)
        ax.set_yticks([])
        ax.set_title(f"step {step_tag}: DDIM {steps} steps, CFG {guidance}, seed {seed}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out, dpi=100)
        plt.close(fig)
    else:
        from PIL import Image
        Image.fromarray(grid).save(out)
    return out


README_BEGIN = "<!-- run-status:begin (written by train_reference.py --update-readme) -->"
README_END = "<!-- run-status:end -->"


def update_readme(model_dir: str, results_dir: str, csv_name: str = "loss.csv") -> Path:
    """Fill the run-status block of README.md with the checkpoint's facts."""
    meta = json.load(open(Path(model_dir) / "training.json"))
    rows = list(csv.DictReader(open(Path(results_dir) / csv_name)))
    last = rows[-1] if rows else {}
    tail = rows[-20:]
    mean_tail = sum(float(r["loss"]) for r in tail) / max(1, len(tail))
    size = (Path(model_dir) / "diffusion_pytorch_model.safetensors").stat().st_size
    samples = sorted(Path(results_dir).glob("samples_*.png"))
    lines = [
        README_BEGIN,
        f"- checkpoint step: **{meta['step']}** (saved {meta['saved_utc']}, EMA weights, "
        f"{size / 2**20:.1f} MiB safetensors)",
        f"- wall time of the run at that checkpoint: {meta['wall_seconds']:.0f} s "
        f"({meta['wall_seconds'] / 3600:.2f} h)",
        f"- last CSV row: step {last.get('step')}, loss {last.get('loss')}, "
        f"ema_loss {last.get('ema_loss')}, lr {last.get('lr')}, t {last.get('seconds')} s",
        f"- mean logged loss over the last {len(tail)} log rows: {mean_tail:.4f}",
        f"- command: `{meta['command']}`",
        f"- seed {meta['seed']}, batch {meta['batch_size']}, bf16 autocast {meta['bf16_autocast']}",
        f"- machine: {meta['machine']}",
        "- sample grids: " + (", ".join(f"`{p.name}`" for p in samples) or "none yet"),
        README_END,
    ]
    readme = Path(results_dir) / "README.md"
    text = readme.read_text() if readme.exists() else ""
    block = "\n".join(lines)
    if README_BEGIN in text and README_END in text:
        pre = text[: text.index(README_BEGIN)]
        post = text[text.index(README_END) + len(README_END):]
        text = pre + block + post
    else:
        text = text + "\n## Run status\n\n" + block + "\n"
    readme.write_text(text)
    return readme


# --------------------------------------------------------------------------- training
def train(args) -> None:
    import torch
    import torch.nn.functional as F

    auto_threads = args.threads == 0
    cur_threads = 2 if auto_threads else args.threads
    torch.set_num_threads(cur_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    deadline = parse_deadline(args.deadline)
    t_start = time.time()

    images, labels = load_fashion_mnist("train", args.data_dir)
    x_all = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)  # [-1, 1]
    y_all = torch.from_numpy(labels)
    N = x_all.shape[0]

    model = build_model(args.arch).train()
    start_step, resumed_from = 0, None
    state = load_state(args.state_file) if args.resume else None
    if args.continue_from_ema:
        start_step, resumed_from = load_ema_checkpoint(model, args.out_dir)
        print(f"continuing from the EMA weights of step {start_step} in {args.out_dir} "
              "(fresh optimizer, warm-up again)", flush=True)
    if state is not None:  # the saved rule, so a resumed run decays exactly as the uninterrupted one
        lr_rule = LRRule(**state["lr_rule"])
        resumed_from = state["extra"].get("continued_from")
        retargets = list(state["extra"].get("lr_retargeted") or [])
        if args.retarget_decay and args.max_steps != lr_rule.end_step:  # a shorter (or longer) budget than planned
            retargets.append({"at_step": state["step"], "from_end_step": lr_rule.end_step, "to_end_step": args.max_steps})
            lr_rule = LRRule(lr_rule.lr, lr_rule.warmup_steps, lr_rule.schedule, lr_rule.lr_min, lr_rule.start_step,
                             args.max_steps)
    else:
        retargets = []
    if state is None:
        lr_rule = LRRule(args.lr, args.warmup_steps, args.lr_schedule, args.lr_min, start_step, args.max_steps)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    sched = build_scheduler()
    acp = sched.alphas_cumprod.float()
    sqrt_acp, sqrt_1macp = acp.sqrt(), (1 - acp).sqrt()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                            betas=(0.9, 0.999))
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
    n_params = sum(p.numel() for p in model.parameters())

    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    csv_path = results / args.csv_name
    new_csv = not csv_path.exists() or args.overwrite_log
    csv_f = open(csv_path, "w" if new_csv else "a", newline="")
    writer = csv.writer(csv_f)
    if new_csv:
        writer.writerow(["step", "loss", "ema_loss", "lr", "seconds"])
        csv_f.flush()

    command = " ".join([Path(sys.executable).name] + sys.argv)
    print(f"params={n_params} ({n_params * 4 / 2**20:.1f} MiB fp32) N={N} bf16={args.bf16} "
          f"threads={torch.get_num_threads()} deadline="
          f"{_dt.datetime.fromtimestamp(deadline, _dt.timezone.utc).isoformat() if deadline else None}",
          flush=True)

    def meta(step, last_loss, ema_loss):
        return dict(
            dataset="Fashion-MNIST (train split, 60000 images, Debian package dataset-fashion-mnist)",
            data_dir=str(args.data_dir),
            normalisation="x = uint8 / 127.5 - 1  (pixels in [-1, 1]), shape (N, 1, 28, 28)",
            class_names=CLASS_NAMES,
            num_classes=NUM_CLASSES,
            null_class_index=NULL_CLASS,
            label_dropout_p=LABEL_DROPOUT,
            prediction="epsilon",
            noise_schedule=SCHEDULE_CONFIG,
            architecture=args.arch,
            model_config=model_config(args.arch),
            weights="EMA",
            ema_decay=args.ema_decay,
            optimizer=dict(name="AdamW", lr=lr_rule.lr, warmup_steps=lr_rule.warmup_steps,
                           lr_schedule=lr_rule.schedule, lr_min=lr_rule.lr_min, decay_from_step=lr_rule.start_step,
                           decay_to_step=lr_rule.end_step, weight_decay=args.weight_decay, betas=[0.9, 0.999],
                           grad_clip=args.grad_clip),
            batch_size=args.batch_size,
            bf16_autocast=bool(args.bf16),
            step=step,
            last_logged_loss=last_loss,
            ema_loss=ema_loss,
            seed=args.seed,
            wall_seconds=round(time.time() - t_start, 1),
            saved_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            command=command,
            continued_from=resumed_from,
            lr_retargeted=retargets,
            machine="2-core CPU (AMD EPYC, avx512_bf16), shared with other jobs; torch threads: "
                    + ("adaptive 1/2" if auto_threads else str(args.threads)),
        )

    gen = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(N, generator=gen)
    pos = 0
    step = start_step
    ema_loss = None
    if state is not None:
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        perm, pos, step = state["perm"], state["pos"], state["step"]
        ema_loss = state["extra"].get("ema_loss")
        print(f"resuming step {step} from {args.state_file} (lr rule {lr_rule})", flush=True)

    def save_all(step_now: int, loss_now: float, ema_loss_now) -> None:
        info = meta(step_now, loss_now, ema_loss_now)
        save_checkpoint(ema, sched, args.out_dir, info)
        save_state(args.state_file, model, ema, opt, gen, perm, pos, step_now, lr_rule, info)
        keep_snapshot(args.out_dir, args.history_dir, step_now)
    acc, acc_n = 0.0, 0
    t_last = time.time()
    step_time = None
    last_logged = float("nan")
    stop_reason = "max-steps"
    # --threads 0: the machine is shared, and 2 OpenMP threads on 2 cores thrash badly when
    # other processes compete. Keep a running s/step estimate per thread count, probe the
    # other count for a few steps every --probe-every steps, and keep the faster one.
    est_by_threads = {1: None, 2: None}
    probe_left, probe_times, base_threads = 0, [], cur_threads
    stop_at = min(args.max_steps, args.stop_at_step or args.max_steps)
    if state is not None and not new_csv:  # rows logged after the saved state are redone: drop them
        csv_f.close()
        rows = list(csv.reader(open(csv_path)))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        csv_f = open(csv_path, "a", newline="")
        writer = csv.writer(csv_f)
    while step < stop_at:
        if stop_at < args.max_steps and step + 1 == stop_at:
            stop_reason = "stop-at-step"
        if auto_threads and step > 0:
            if probe_left == 0 and step % args.probe_every == 0:
                base_threads, cur_threads = cur_threads, 3 - cur_threads
                torch.set_num_threads(cur_threads)
                probe_left, probe_times = args.probe_steps, []
        if deadline is not None:
            est = step_time if step_time is not None else 5.0
            if time.time() + est + args.deadline_margin > deadline:
                stop_reason = "deadline"
                break
        t0 = time.time()
        if pos + args.batch_size > N:
            perm = torch.randperm(N, generator=gen)
            pos = 0
        idx = perm[pos: pos + args.batch_size]
        pos += args.batch_size
        x0, y = x_all[idx], y_all[idx]
        t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sqrt_acp[t].view(-1, 1, 1, 1) * x0 + sqrt_1macp[t].view(-1, 1, 1, 1) * noise

        lr = lr_rule.at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        if args.arch == "unet":  # DiT's LabelEmbedding drops labels itself in train mode; nn.Embedding does not
            y = torch.where(torch.rand(y.shape, generator=gen) < LABEL_DROPOUT, torch.full_like(y, NULL_CLASS), y)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
            pred = denoise(model, args.arch, xt, t, y)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        # EMA of weights (warm-up of the decay so early checkpoints are usable)
        d = min(args.ema_decay, (1 + step) / (10 + step))  # continued runs: step counts from the checkpoint
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)

        lv = loss.item()
        if not math.isfinite(lv):
            raise RuntimeError(f"non-finite loss at step {step}")
        ema_loss = lv if ema_loss is None else 0.98 * ema_loss + 0.02 * lv
        acc += lv
        acc_n += 1
        dt = time.time() - t0
        step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
        if auto_threads:
            if probe_left > 0:
                probe_times.append(dt)
                probe_left -= 1
                base_est = est_by_threads[base_threads]
                if (len(probe_times) >= 3 and base_est is not None
                        and float(np.median(probe_times[1:])) > 1.5 * base_est):
                    probe_left = 0  # clearly worse: cut the probe short
                if probe_left == 0:
                    est_by_threads[cur_threads] = float(np.median(probe_times[1:] or probe_times))
                    other = est_by_threads[base_threads]
                    if other is not None and other < est_by_threads[cur_threads]:
                        cur_threads = base_threads
                        torch.set_num_threads(cur_threads)
                    print(f"threads probe: s/step est {est_by_threads} -> using {cur_threads}",
                          flush=True)
            else:
                e = est_by_threads[cur_threads]
                est_by_threads[cur_threads] = dt if e is None else 0.9 * e + 0.1 * dt

        if step % args.log_every == 0 or step == args.max_steps:
            last_logged = acc / acc_n
            el = time.time() - t_start
            writer.writerow([step, f"{last_logged:.6f}", f"{ema_loss:.6f}", f"{lr:.3e}", f"{el:.1f}"])
            csv_f.flush()
            print(f"step {step} loss {last_logged:.4f} ema_loss {ema_loss:.4f} lr {lr:.2e} "
                  f"s/step {(time.time() - t_last) / acc_n:.3f} threads {torch.get_num_threads()} "
                  f"load {os.getloadavg()[0]:.1f} elapsed {el:.0f}s", flush=True)
            acc, acc_n = 0.0, 0
            t_last = time.time()
        if args.ckpt_every and step % args.ckpt_every == 0:
            save_all(step, last_logged, ema_loss)
            plot_losses(csv_path, results / "loss_curve.png", TITLES[args.arch])
            print(f"checkpoint step {step} -> {args.out_dir}", flush=True)

    save_all(step, last_logged, ema_loss)
    csv_f.close()
    plot_losses(csv_path, results / "loss_curve.png", TITLES[args.arch])
    print(f"done: stop={stop_reason} step={step} wall={time.time() - t_start:.0f}s "
          f"ema_loss={ema_loss} -> {args.out_dir}", flush=True)
    if args.sample_at_end:
        out = sample_grid(args.out_dir, args.results_dir, guidance=args.guidance,
                          steps=args.sample_steps, arch=args.arch)
        print(f"samples -> {out}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Examples:"):],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--arch", default="dit", choices=ARCHS,
                   help="dit: dit-fmnist (DiTTransformer2DModel); unet: unet-fmnist (UNet2DConditionModel)")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder with Fashion-MNIST idx(.gz) files")
    p.add_argument("--out-dir", help="diffusers folder for the EMA checkpoint (default: graphs/weights/<model>)")
    p.add_argument("--results-dir", help="loss CSV / plots / samples (default: benchmarks/results/train_<model>)")
    p.add_argument("--csv-name", default="loss.csv")
    p.add_argument("--overwrite-log", action="store_true", help="start a fresh loss CSV")
    p.add_argument("--continue-from-ema", action="store_true",
                   help="start from the EMA weights and step count of the checkpoint in --out-dir "
                        "(the optimizer state is not saved: AdamW restarts, with warm-up)")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from --state-file (weights, EMA, optimizer, data order, lr rule)")
    p.add_argument("--retarget-decay", action="store_true",
                   help="with --resume: end the lr decay at this run's --max-steps instead of the saved one")
    p.add_argument("--state-file", help="the resume file (default: .<weights folder>.train-state.pt beside it)")
    p.add_argument("--history-dir", help="keep a copy of every checkpoint's weights here (for the FID curve)")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="after the warm-up: constant, or cosine decay to --lr-min at --max-steps")
    p.add_argument("--lr-min", type=float, default=0.0)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="save and stop at this step (the lr rule still runs to --max-steps; go on with --resume)")
    p.add_argument("--deadline", default=None,
                   help="wall-clock stop time, 'HH:MM' (UTC) or ISO datetime; saves and exits before it")
    p.add_argument("--deadline-margin", type=float, default=30.0,
                   help="seconds kept free before the deadline for the final save")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 disables")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--bf16", type=int, default=0, help="1: bf16 autocast on CPU")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads; 0 = adaptive 1/2 (probes which is faster on a shared CPU)")
    p.add_argument("--probe-every", type=int, default=200, help="--threads 0: probe interval (steps)")
    p.add_argument("--probe-steps", type=int, default=8, help="--threads 0: steps per probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--sample-at-end", type=int, default=1)
    p.add_argument("--sample-only", action="store_true",
                   help="only sample one image per class from --out-dir and save a PNG grid")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite the run-status block of <results-dir>/README.md from the "
                        "checkpoint's training.json and the loss CSV, then exit")
    args = p.parse_args(argv)
    out_dir, results_dir = default_dirs(args.arch)
    args.out_dir = args.out_dir or out_dir
    args.results_dir = args.results_dir or results_dir
    args.state_file = args.state_file or str(default_state_file(args.out_dir))
    if args.resume and args.continue_from_ema:
        p.error("--resume continues a run exactly; --continue-from-ema starts a new one from its weights: pick one")
    if args.update_readme:
        print(update_readme(args.out_dir, args.results_dir))
        return
    if args.sample_only:
        import torch
        torch.set_num_threads(args.threads or 2)
        out = sample_grid(args.out_dir, args.results_dir, guidance=args.guidance,
                          steps=args.sample_steps, seed=args.sample_seed, arch=args.arch)
        print(out)
        return
    train(args)


if __name__ == "__main__":
    main()
