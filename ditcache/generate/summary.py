"""The run's summary: what was computed and reused, per-rank throughput, scaling efficiency."""

from __future__ import annotations

import json
from pathlib import Path

from .distributed import Dist
from .shards import FORMAT_VERSION


def reference_throughput(value: str | None) -> tuple[float | None, str | None]:
    """(images/s, where from) of --reference-throughput: a number, or a one-rank run's summary.json."""
    if value is None:
        return None, None
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not number > 0 or number == float("inf"):
            raise ValueError(f"--reference-throughput {value} is not a positive number of images/s; give the "
                             f"one-rank throughput or its summary.json")
        return number, "given"
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--reference-throughput {value} is neither a number nor an existing file; give the "
                         f"one-rank images/s or a one-rank run's summary.json")
    data = json.loads(path.read_text())
    if data.get("world_size") != 1 or not data.get("throughput"):
        raise ValueError(f"{value} is not the summary of a one-rank run with computed chunks; give images/s instead")
    return float(data["throughput"]), value


def summary(cfg, job: Dist, everyone: list[dict], reused: int, total: int, final: Path, images: bool,
            reference: float | None, reference_source: str | None, run_hash: str) -> dict:
    """summary.json of a finished run (``everyone``: each rank's stats)."""
    computed_images = sum(s["images"] for s in everyone)
    wall = max(s["loop_s"] for s in everyone)
    throughput = computed_images / wall if computed_images and wall > 0 else None
    efficiency = None
    if throughput and reference:
        efficiency = throughput / (job.world * reference)
    return {
        "format": FORMAT_VERSION, "args_hash": run_hash, "world_size": job.world, "num_samples": cfg.num_samples,
        "chunks_total": total, "chunks_reused": reused, "chunks_computed": sum(len(s["chunks"]) for s in everyone),
        "computed": sorted(c for s in everyone for c in s["chunks"]), "images_computed": computed_images,
        "seconds": wall, "throughput": throughput, "reference_throughput": reference,
        "reference_source": reference_source, "scaling_efficiency": efficiency,
        "ranks": [{k: v for k, v in s.items() if k != "chunks"} | {"chunks": len(s["chunks"])} for s in everyone],
        "output": str(final), "output_kind": "uint8 images" if images else "latents (no --vae: no uint8 npz)",
    }


def summary_text(s: dict) -> str:
    """The summary as the lines ``generate`` prints."""
    lines = [f"generate: {s['num_samples']} samples in {s['chunks_total']} chunks on {s['world_size']} rank(s): "
             f"{s['chunks_computed']} computed, {s['chunks_reused']} reused from earlier runs"]
    for r in s["ranks"]:
        rate = f"{r['throughput']:.2f} img/s" if r["throughput"] else "idle"
        lines.append(f"  rank {r['rank']}: {r['chunks']} chunks, {r['images']} images in {r['compute_s']:.2f} s: "
                     f"{rate} (torch threads {r['threads']}, load {r['load_s']:.1f} s)")
    if s["throughput"]:
        total = f"  total: {s['images_computed']} images in {s['seconds']:.2f} s: {s['throughput']:.2f} img/s"
        if s["scaling_efficiency"] is not None:
            total += (f"; scaling efficiency {100 * s['scaling_efficiency']:.0f}% of {s['world_size']} x "
                      f"{s['reference_throughput']:.2f} img/s (one rank, {s['reference_source']})")
        elif s["world_size"] == 1:
            total += " (one-rank reference: pass this summary.json as --reference-throughput to a multi-rank run)"
        lines.append(total)
    lines.append(f"wrote {s['output']}")
    if s["output_kind"].startswith("latents"):
        lines.append("  (latent model without --vae: latents stored, no uint8 sample .npz; pass --vae to decode)")
    return "\n".join(lines)
