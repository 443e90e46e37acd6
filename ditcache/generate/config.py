"""What one ``generate`` run does (:class:`GenerateConfig`), built by the CLI or by a caller."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_SIZE = 16


@dataclass
class GenerateConfig:
    """What ``generate`` does.

    Args:
        num_samples: N, indices 0..N-1.
        out: output folder (shared by all nodes); holds run.json, shards/, summary.json and the merged .npz.
        model, weights, random_weights: the eager model (as ``sample``), unless ``engines`` is given.
        engines: engine directory from export-engines (the compiled runner); chunk size = its batch.
        schedule, steps: schedule.yaml, or the full schedule with ``steps`` (default 50).
        classes: class list cycled over the indices (default: all classes, class of i = i % num_classes).
        seed: global seed; sample i's noise seed is ``compiler.runtime.seeds.sample_seed(seed, i)``.
        chunk_size: B, images per batch (default 16, or the engines' batch).
        scheduler, guidance: sampler and classifier-free guidance.
        vae: local diffusers VAE for latent models (without one, latents are stored and no uint8 npz written).
        device: auto | cpu | cuda.
        overwrite: discard what ``out`` holds from an earlier run with other arguments.
        reference_throughput: one-rank images/s (number or a one-rank run's summary.json) for scaling efficiency.
        quiet: no per-chunk progress lines.
        json: print the summary as JSON.
        crash_after: testing only: exit abruptly after writing this many shards (leaving a half-written tmp file).
    """

    num_samples: int
    out: str
    model: str | None = None
    weights: str | None = None
    random_weights: bool = False
    engines: str | None = None
    schedule: str | None = None
    steps: int | None = None
    classes: tuple[int, ...] | None = None
    seed: int = 0
    chunk_size: int | None = None
    scheduler: str = "ddim"
    guidance: float = 4.0
    vae: str | None = None
    device: str = "auto"
    overwrite: bool = False
    reference_throughput: str | None = None
    quiet: bool = False
    json: bool = False
    crash_after: int | None = None
