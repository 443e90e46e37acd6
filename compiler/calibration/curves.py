"""Block caching's measurements: per-block relative L1 change curves over sampling steps, streamed (the file format
and its reader are graphs.curves')."""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ditcache.graphs import parts_for
from ditcache.graphs.curves import ChangeCurves
from ditcache.graphs.registry import ModelSpec
from ditcache.graphs.segments import block_modules

from ditcache.compiler.atomic import atomic_path, write_atomic
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample


def save_curves(curves: ChangeCurves, path: str | os.PathLike) -> None:
    """Write the JSON that schedule.yaml's ``curves:`` reads (atomic; the format is graphs.curves')."""
    write_atomic(path, curves.to_json())


class _Welford:
    """Running mean and variance of many values per (block, step) cell."""

    def __init__(self, blocks: int, steps: int):
        self.n = torch.zeros(blocks, steps, dtype=torch.float64)
        self.mean = torch.zeros(blocks, steps, dtype=torch.float64)
        self.m2 = torch.zeros(blocks, steps, dtype=torch.float64)

    def add(self, block: int, step: int, values: torch.Tensor) -> None:
        for v in values.double().tolist():
            self.n[block, step] += 1
            delta = v - self.mean[block, step]
            self.mean[block, step] += delta / self.n[block, step]
            self.m2[block, step] += delta * (v - self.mean[block, step])

    def std(self) -> torch.Tensor:
        return (self.m2 / (self.n - 1).clamp(min=1)).sqrt()


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """Per-row ‖current − previous‖₁ / ‖current‖₁ for (B, ...) tensors."""
    diff = (current.float() - previous.float()).flatten(1).abs().sum(1)  # (B,)
    return diff / current.float().flatten(1).abs().sum(1).clamp(min=1e-12)


@torch.no_grad()
def calibrate(model: nn.Module, spec: ModelSpec, requests: Iterable[SampleRequest], weights_sha256: str = "",
              progress: bool = False, modules: Sequence[nn.Module] | None = None) -> ChangeCurves:
    """Run full sampling for every request and return the averaged change curves.

    Memory stays bounded: only each block's output of the previous step is kept, and the statistics are
    running sums (nothing per sample is hoarded). ``modules`` measures other modules than the blocks (e.g. a
    U-Net's resnets, to compare with its attention layers); ``meta["measured"]`` marks such curves.
    """
    requests = list(requests)
    if not requests:
        raise ValueError("calibration needs at least one request (classes x seeds)")
    steps = requests[0].steps
    if any(r.steps != steps or r.scheduler != requests[0].scheduler or r.guidance_scale != requests[0].guidance_scale
           for r in requests):
        raise ValueError("all calibration requests must share steps, sampler and guidance")
    # DiT blocks, or a U-Net's attention layers (unless other modules are asked for)
    parts = parts_for(model, spec)
    blocks = list(modules) if modules is not None else block_modules(parts)
    # the block output as ditcache's hidden state: FLUX / SD3 blocks return (text, image), joined as [text; image]
    read = getattr(parts, "block_output", None) if modules is None else None
    stats = _Welford(len(blocks), steps)
    state: dict[str, Any] = {"step": -1, "previous": {}}

    def hook(index: int):
        def record(_module, _args, output):
            if read is not None:
                output = read(output)
            elif isinstance(output, tuple):  # diffusers' return_dict=False tuples
                output = output[0]
            previous = state["previous"].get(index)
            if previous is not None and previous.shape == output.shape:
                stats.add(index, state["step"], relative_l1(output, previous))
            state["previous"][index] = output.detach()

        return record

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    denoise = model_denoiser(model, spec)

    def counting(inputs):
        state["step"] += 1
        return denoise(inputs)

    iterator = requests
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(requests, desc="calibrate", unit="run")
    try:
        for request in iterator:
            state["step"], state["previous"] = -1, {}
            sample(counting, spec, request)
    finally:
        for h in handles:
            h.remove()
    first = requests[0]
    meta = {"model": spec.name, "weights_sha256": weights_sha256, "sampler": first.scheduler,
            "guidance": first.guidance_scale, "classes": sorted({c for r in requests for c in r.class_labels}),
            "seeds": sorted({r.seed for r in requests})}
    if modules is not None:
        meta["measured"] = f"{len(blocks)} given modules, not the blocks: not for schedules"
    return ChangeCurves(len(blocks), steps, stats.mean.tolist(), stats.std().tolist(), int(stats.n[0, 1].item())
                        if steps > 1 else 0, meta)


def plot_curves(curves: ChangeCurves, path: str | os.PathLike) -> None:
    """A blocks x steps heatmap beside per-block curves (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = np.array(curves.mean)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    image = left.imshow(mean[:, 1:], aspect="auto", cmap="viridis", origin="lower",
                        extent=(0.5, curves.steps - 0.5, -0.5, curves.num_blocks - 0.5))
    left.set_xlabel("step")
    left.set_ylabel("block")
    left.set_title("relative L1 change of block output")
    fig.colorbar(image, ax=left)
    colors = plt.cm.plasma(np.linspace(0, 1, curves.num_blocks))
    for i in range(curves.num_blocks):
        right.plot(range(1, curves.steps), mean[i, 1:], color=colors[i], label=f"block {i}" if i % 4 == 0 else None)
    right.set_xlabel("step")
    right.set_ylabel("relative L1 change")
    right.set_yscale("log")
    right.legend(fontsize=7)
    right.set_title(f"{curves.meta.get('model', '')}, {curves.meta.get('sampler', '')}, {curves.steps} steps")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
