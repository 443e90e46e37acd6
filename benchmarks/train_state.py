"""What a training run needs to continue exactly where it stopped: the learning-rate rule and the resume file."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ditcache.compiler.atomic import atomic_path

LR_SCHEDULES = ("constant", "cosine")
STATE_FORMAT = 1


@dataclass(frozen=True)
class LRRule:
    """Linear warm-up from ``start_step``, then constant or a cosine decay to ``lr_min`` at ``end_step``."""

    lr: float
    warmup_steps: int
    schedule: str = "constant"
    lr_min: float = 0.0
    start_step: int = 0
    end_step: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule {self.schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
        if self.schedule == "cosine" and self.end_step <= self.start_step + self.warmup_steps:
            raise ValueError(f"--lr-schedule cosine needs --max-steps ({self.end_step}) beyond the start step "
                             f"({self.start_step}) plus the warm-up ({self.warmup_steps})")
        if not 0 <= self.lr_min <= self.lr:
            raise ValueError(f"--lr-min {self.lr_min} must lie in [0, --lr {self.lr}]")

    def at(self, step: int) -> float:
        """The learning rate of the update that makes ``step + 1`` (``step`` updates done)."""
        done = step - self.start_step
        if done < self.warmup_steps:
            return self.lr * (done + 1) / max(1, self.warmup_steps)
        if self.schedule == "constant":
            return self.lr
        span = self.end_step - self.start_step - self.warmup_steps
        progress = min(1.0, (done - self.warmup_steps) / span)
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * progress))


def default_state_file(out_dir: str) -> Path:
    """The resume file beside the weights folder: ``.<name>.train-state.pt`` (git-ignored, never shipped)."""
    out = Path(out_dir)
    return out.parent / f".{out.name}.train-state.pt"


def save_state(path: str | os.PathLike, model, ema, optimizer, generator, perm, pos: int, step: int,
               lr_rule: LRRule, extra: dict[str, Any]) -> None:
    """Everything the loop needs to continue bit for bit (same thread count), written atomically."""
    import torch

    state = {
        "format": STATE_FORMAT, "step": step, "pos": pos, "perm": perm, "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),  # diffusers' label dropout draws from the global generator
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "lr_rule": lr_rule.__dict__, "extra": extra,
    }
    with atomic_path(path, mkdir=True) as tmp:
        torch.save(state, tmp)


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """The saved state; a clear error when it is missing or of another format."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--resume: no training state at {path}; start the run without --resume (or pass the "
                         f"--state-file the earlier run wrote)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SystemExit(f"--resume: {path} is not a training state of format {STATE_FORMAT}; start afresh")
    return state


def keep_snapshot(out_dir: str, history_dir: str | None, step: int) -> Path | None:
    """Copy the checkpoint's weights to ``<history_dir>/step-<step>.safetensors`` (for the FID-vs-steps curve)."""
    if not history_dir:
        return None
    target = Path(history_dir) / f"step-{step:06d}.safetensors"
    with atomic_path(target, mkdir=True) as tmp:
        shutil.copyfile(Path(out_dir) / "diffusion_pytorch_model.safetensors", tmp)
    return target
