"""The sampler of one rank, loaded once: the eager model or an engine directory, and one chunk's samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ditcache.compiler.runtime.seeds import sample_seeds

from .chunks import chunk_range, class_for
from .config import DEFAULT_CHUNK_SIZE, GenerateConfig
from .distributed import Dist


@dataclass
class Runner:
    """What samples the chunks: spec, dispatcher, steps, chunk size, and what identifies it in run.json."""

    spec: Any
    dispatcher: Any
    steps: int
    chunk_size: int
    pad: bool  # engines have a fixed batch: the last chunk is padded with indices >= N (then dropped)
    identity: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def load_runner(cfg: GenerateConfig, job: Dist) -> Runner:
    """The eager model (``cfg.model``) or the compiled runner of ``cfg.engines``, checked against the arguments."""
    import torch

    from ditcache.compiler.runtime.runner import eager_dispatcher
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.schedule import full_schedule, load_schedule

    schedule = load_schedule(cfg.schedule) if cfg.schedule else None
    if schedule is not None and cfg.steps is not None and cfg.steps != schedule.steps:
        raise ValueError(f"--steps {cfg.steps} contradicts the schedule's steps: {schedule.steps}; drop --steps")
    warnings = []
    if cfg.engines:
        from ditcache.export.load import load_engines

        if cfg.model is not None or cfg.random_weights:
            raise ValueError("--engines samples with the model the engines were built from; "
                             "drop --model/--random-weights")
        from ditcache.export.manifest import Manifest

        manifest = Manifest.read(Path(cfg.engines))
        batch = cfg.chunk_size or manifest.batch["images"]  # any chunk: the dispatcher runs it in the engines' batch
        from ditcache.graphs.registry import get_spec

        check: dict[str, Any] = {"images": batch, "guidance": get_spec(manifest.model["name"]).cfg_batch(cfg.guidance)}
        if schedule is not None:
            check["schedule"] = schedule
        device = None if cfg.device == "auto" else cfg.device
        loaded = load_engines(cfg.engines, weights=cfg.weights, device=device, **check)
        if cfg.steps is not None and cfg.steps != loaded.plan.num_steps:
            raise ValueError(f"the engines run {loaded.plan.num_steps} steps; drop --steps or export for {cfg.steps}")
        job.device = device or loaded.manifest.backend["settings"]["device"]
        m = loaded.manifest
        identity = {"runner": "engines", "backend": m.backend["name"], "settings": m.backend["settings"],
                    "granularity": m.granularity, "weights_sha256": m.model["weights_sha256"],
                    "plan_hash": loaded.plan.hash()}
        return Runner(loaded.spec, loaded.dispatcher, loaded.plan.num_steps, batch, False, identity, warnings)

    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    spec = get_spec(cfg.model or "dit-fmnist")
    model, info = load_model(spec, cfg.weights, cfg.random_weights)
    if info.random:
        warnings.append(f"WARNING: {spec.name} has RANDOM weights ({info.source}): timings are real, images are noise")
    if job.device != "cpu":
        model = model.to(torch.device(job.device, job.local_rank) if job.device == "cuda" else job.device)
    schedule = schedule or full_schedule(cfg.steps or 50)
    plan = plan_for(schedule, spec)
    chunk = cfg.chunk_size or DEFAULT_CHUNK_SIZE
    identity = {"runner": "eager", "weights_sha256": info.sha256, "plan_hash": plan.hash()}
    return Runner(spec, eager_dispatcher(model, spec, plan), schedule.steps, chunk, False, identity, warnings)


def sample_chunk(runner: Runner, decoder, cfg: GenerateConfig, classes: Sequence[int], chunk: int, device: str):
    """(indices, labels, samples) of ``chunk``, sampled as one batch (padded to the engines' batch if need be)."""
    from ditcache.compiler.runtime.runner import sample_with_plan
    from ditcache.compiler.runtime.sampling import SampleRequest

    indices = chunk_range(chunk, runner.chunk_size, cfg.num_samples)
    batch = range(indices.start, indices.start + runner.chunk_size) if runner.pad else indices
    request = SampleRequest(tuple(class_for(i, classes) for i in batch), runner.steps, cfg.guidance, cfg.seed,
                            cfg.scheduler, sample_seeds=sample_seeds(cfg.seed, batch))
    latents = sample_with_plan(runner.dispatcher, runner.spec, request, device=device)
    samples = decoder(latents)[: len(indices)]
    labels = np.asarray(request.class_labels[: len(indices)], dtype=np.int64)
    return np.arange(indices.start, indices.stop, dtype=np.int64), labels, np.ascontiguousarray(samples)
