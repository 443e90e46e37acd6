"""This process's place in a torchrun job: rank, world, device, and the collectives ``generate`` uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

DIST_TIMEOUT = timedelta(hours=2)  # the final gather waits for the slowest rank


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False
    device: str = "cpu"

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.group:
            return obj
        import torch.distributed as dist

        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.group:
            return [obj]
        import torch.distributed as dist

        boxes: list[Any] = [None] * self.world
        dist.all_gather_object(boxes, obj)
        return boxes

    def barrier(self) -> None:
        """Wait until every rank gets here (a no-op without a group)."""
        if self.group:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Leave the process group (after an error too, so no barrier here)."""
        if self.group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.group = False


def setup_distributed(device: str) -> Dist:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on CUDA); else a one-process job.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; on CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no GPU; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this node; "
                               f"use --nproc-per-node {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
    job = Dist(rank, world, local_rank, False, device)
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if device == "cuda" else "gloo"
        kwargs = {"device_id": torch.device("cuda", local_rank)} if device == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT, **kwargs)
        job.rank, job.world, job.group = dist.get_rank(), dist.get_world_size(), True
    return job
