"""ditcache's adaptive rows in the peer comparison: every sampling run's decisions, kept (they vary per batch).

An adaptive schedule (docs/adaptive.md) replays at the steps its dispatcher decides at run time, so the blocks a row
runs depend on the batch: the quality batches, the timing batch and the compiled runs each decide for themselves.
The eager phase counts blocks with peers.CallCounter as for every row; this record adds, for eager and compiled
runs alike, the replayed steps of each run read from the dispatcher, and the blocks that follow from them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Mapping

import torch


def recording(dispatcher, num_blocks: int) -> tuple[Callable, Callable[[], dict[str, Any]]]:
    """(denoiser, info) around an AdaptiveDispatcher: the denoiser notes each run's model batch and replayed steps;
    ``info()`` returns ``{"adaptive_runs": [{model_batch, replayed_steps, blocks_run}, ...]}``."""
    plan = dispatcher.plan
    replayed_blocks = plan.replay_range.end - plan.replay_range.start
    runs: list[dict[str, Any]] = []

    def denoiser(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if dispatcher.step == 0:
            runs.append({"model_batch": int(inputs["x"].shape[0]), "replayed_steps": []})
        out = dispatcher(inputs)
        last = dispatcher.decisions[-1]
        if last.program == "replay":
            runs[-1]["replayed_steps"].append(last.step)
        return out

    def info() -> dict[str, Any]:
        return {"adaptive_runs": [{**r, "blocks_run": plan.num_steps * num_blocks
                                   - len(r["replayed_steps"]) * replayed_blocks} for r in runs]}

    return denoiser, info


def summary(info: Mapping[str, Any] | None, label: str) -> str | None:
    """One note line: blocks run per run (min–max) for each model batch of the recorded runs; None without any."""
    runs = (info or {}).get("adaptive_runs")
    if not runs:
        return None
    by_batch: dict[int, list[int]] = defaultdict(list)
    for r in runs:
        by_batch[r["model_batch"]].append(r["blocks_run"])
    parts = []
    for batch, blocks in sorted(by_batch.items()):
        span = f"{min(blocks)}" if min(blocks) == max(blocks) else f"{min(blocks)}–{max(blocks)}"
        parts.append(f"model batch {batch}: {span} blocks over {len(blocks)} run(s)")
    return f"adaptive decisions ({label}, from the dispatcher): " + "; ".join(parts)
