"""One benchmark row, run in its own process so that its peak memory is its own.

Phases (``python -m ditcache.benchmarks.bench_worker --phase PHASE --spec JOB.json --result OUT.json``):

* ``weights``: create the model with random weights once and save them as one safetensors file, so that
  every row loads the same weights quickly (random initialisation of DiT-XL/2 takes ~20 s).
* ``build``: ``export_engines`` for a compiled row (its own process: the export's peak memory and JIT
  compiles do not count against the timed process).
* ``run``: load (weights, or the engine directory through ``load_engines``), warm up, then the timed
  sampling runs; writes the final latents for the fidelity comparison.

Progress lines on stderr start with ``bench:``; the runner shows them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ditcache.compiler.atomic import atomic_path, write_json_atomic

from .bench_config import BACKEND_STOCK, RowSpec
from .row_memory import peak_rss_since_reset, process_peak_rss, reset_peak_rss, rss_bytes  # noqa: F401 - re-exported


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write."""
    write_json_atomic(path, data, mkdir=True, indent=2, sort_keys=True, default=str)


def parameter_count(weights: str | None) -> int | None:
    """Parameters in a weights file, from its header (no tensor is read); fixed position tables excluded."""
    if not weights:
        return None
    path = Path(weights)
    if path.is_dir():
        folder = next((path / sub for sub in ("transformer", "unet") if (path / sub).is_dir()), path)
        path = folder / "diffusion_pytorch_model.safetensors"
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    weights = str(path)
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), "pt") as handle:
        for key in handle.keys():
            if key.endswith("pos_embed.pos_embed"):
                continue
            count = 1
            for dim in handle.get_slice(key).get_shape():
                count *= int(dim)
            total += count
    return total


BYTES_PER = {"fp32": 4, "fp16": 2, "bf16": 2}

_INIT_FUNCTIONS = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                   "trunc_normal_", "constant_", "zeros_", "ones_", "orthogonal_")


@contextlib.contextmanager
def skip_random_init():
    """Skip torch.nn.init while a model whose every weight is then loaded from a file is built.

    ``load_model`` builds the diffusers module (random initialisation: ~20 s for DiT-XL/2 on 2 cores) and then
    overwrites every parameter from the file after checking that the file has them all; the initialisation is
    wasted setup time that would count against the benchmark's budget in every row process. Setup only: no
    timed code runs inside this context."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS if hasattr(torch.nn.init, name)}
    try:
        for name in saved:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


# ---- the stock pipeline's stand-in VAE ------------------------------------------------------------------
class LatentCaptureVAE(nn.Module):
    """Stand-in for DiTPipeline's VAE when no VAE is benchmarked: ``decode`` returns its input unchanged
    (``scaling_factor`` 1, so the pipeline hands it exactly its final latents) and keeps a copy. The
    pipeline's own loop then runs unmodified and the decode costs nothing measurable."""

    def __init__(self):
        super().__init__()
        # block_out_channels: PixArtAlphaPipeline derives its latent scale factor (8) from it
        self.config = types.SimpleNamespace(scaling_factor=1.0, block_out_channels=(1, 2, 3, 4))
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)
        self.last: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    def decode(self, latents: torch.Tensor):
        self.last = latents.detach().clone()
        return types.SimpleNamespace(sample=latents)


# ---- runners: one per row kind ----------------------------------------------------------------------------
class _Runner:
    """setup() -> warmup() -> run() ...; step_seconds() after each run."""

    timing = False
    weights_bytes: int | None = None
    param_count: int | None = None
    notes: list[str]

    def step_seconds(self) -> dict[str, list[float]]:
        return {}

    def measurements(self) -> dict[str, Any]:
        """Fields the row records besides the common ones (peer rows: counted blocks, dynamo's counters)."""
        return {}


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.startswith("cuda") else None


def prompts_for(row: RowSpec, spec):
    """The prompt embeddings of a text-conditioned row (None for class rows): the config's file, its rows cycled
    over the images, or synthetic embeddings (timing only)."""
    if not spec.text_conditioned:
        return None
    from ditcache.compiler.runtime.conditioning import pooled_channels, text_channels
    from ditcache.compiler.runtime.prompts import PromptEmbeddings, synthetic_prompts

    if row.embeddings is None:
        return synthetic_prompts(row.num_images, int(spec.text_length), int(text_channels(spec)), row.seed,
                                 pooled=pooled_channels(spec))
    prompts = PromptEmbeddings.load(row.embeddings)
    return prompts.select([i % prompts.num_images for i in range(row.num_images)])


class StockRunner(_Runner):
    """The family's own diffusers pipeline (its record's ``stock``: DiTPipeline, PixArtAlphaPipeline,
    StableDiffusionPipeline), eager, from the same denoiser weights and a make_scheduler scheduler."""

    def __init__(self, row: RowSpec, spec, schedule, dtype: torch.dtype):
        from ditcache.compiler.runtime.sampling import make_scheduler
        from ditcache.graphs.weights import load_model

        if schedule.kind != "full":
            raise ValueError(f"the stock pipeline runs full schedules only ({row.schedule} is {schedule.kind})")
        self.row, self.spec, self.steps, self.dtype = row, spec, schedule.steps, dtype
        with skip_random_init():
            model, _ = load_model(spec, row.weights)
        model = model.to(torch.device(row.device), dtype).eval()
        self.param_count = sum(p.numel() for p in model.parameters())
        self.weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.vae = LatentCaptureVAE().to(row.device)
        scheduler = make_scheduler(row.scheduler, spec.scheduler_config)
        self.prompts = prompts_for(row, spec)
        self.stock = spec.family_record.stock
        self.pipe = self.stock.build(model, self.vae, scheduler)  # text encoders left out: prompts are embeddings
        self.pipe.set_progress_bar_config(disable=True)
        self.notes = [f"stock diffusers {type(self.pipe).__name__}.__call__ with a stand-in VAE whose decode returns "
                      f"the latents (decode excluded); per-step time = the transformer call"]
        if self.prompts is not None and row.embeddings is None:
            self.notes.append("synthetic prompt embeddings (random text-encoder-shaped tensors, 20 real tokens "
                              "padded to the model's token count; no text encoder): timing only")
        called = self.prepare(model)  # what the pipeline calls: the per-step timing hooks go there
        self._seconds: list[float] = []
        self._start = 0.0
        sync = _sync(row.device)

        def before(module, args, kwargs):
            if self.timing:
                if sync:
                    sync()
                self._start = time.perf_counter()

        def after(module, args, kwargs, output):
            if self.timing:
                if sync:
                    sync()
                self._seconds.append(time.perf_counter() - self._start)

        called.register_forward_pre_hook(before, with_kwargs=True)
        called.register_forward_hook(after, with_kwargs=True)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module the pipeline calls (peer rows: the transformer with the peer, maybe compiled)."""
        return model

    def _call(self, steps: int) -> torch.Tensor:
        """One pipeline call on the row's class labels or prompt embeddings; the final latents."""
        inputs = self.stock.call_inputs(self.spec, tuple(self.row.class_labels), self.prompts, self.row.guidance)
        generator = torch.Generator(device="cpu").manual_seed(self.row.seed)
        with torch.no_grad():
            out = self.pipe(**inputs, guidance_scale=self.row.guidance, generator=generator,
                            num_inference_steps=steps)
        return getattr(out, self.stock.output) if self.stock.returns_latents else self.vae.last  # WanPipeline: frames

    def warmup(self, mode: str) -> None:
        # PixArtAlphaPipeline's one-step path indexes the scheduler output as LCM's: warm up with two steps
        self._call(min(self.steps, 1 if self.prompts is None else 2) if mode == "variants" else self.steps)

    def run(self) -> torch.Tensor:
        self._seconds = []
        return self._call(self.steps)

    def step_seconds(self) -> dict[str, list[float]]:
        return {"full": list(self._seconds)}


class DispatcherRunner(_Runner):
    """ditcache's sampling loop over a Dispatcher (eager, or loaded from an engine directory)."""

    def __init__(self, row: RowSpec, spec, plan, dispatcher, dtype: torch.dtype):
        from ditcache.compiler.runtime.sampling import SampleRequest

        self.row, self.spec, self.plan, self.dispatcher, self.dtype = row, spec, plan, dispatcher, dtype
        self.dispatcher.sync = _sync(row.device)
        self.request = SampleRequest(tuple(row.class_labels), plan.num_steps, row.guidance, row.seed, row.scheduler,
                                     prompts=prompts_for(row, spec))
        self.notes = []

    @property
    def timing(self) -> bool:  # type: ignore[override]
        return self.dispatcher.timing

    @timing.setter
    def timing(self, value: bool) -> None:
        self.dispatcher.timing = value

    def warmup(self, mode: str) -> None:
        if mode == "run":
            self.run()
            return
        warm_variants(self.dispatcher, self.spec, self.request, self.dtype, self.row.device)

    def run(self) -> torch.Tensor:
        from ditcache.compiler.runtime.runner import sample_with_plan

        out = sample_with_plan(self.dispatcher, self.spec, self.request, dtype=self.dtype, device=self.row.device)
        if self.row.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    def step_seconds(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.dispatcher.step_seconds.items()}


@torch.no_grad()
def warm_variants(dispatcher, spec, request, dtype: torch.dtype, device: str) -> None:
    """Call every distinct step program once (compiles JIT backends, touches every engine), in order of first
    use, so that each replayed range has been recorded by an earlier call. Costs one denoiser call per variant
    instead of a whole sampling run."""
    from ditcache.graphs.corrections import step_corrections

    plan = dispatcher.plan
    inputs = first_step_inputs(spec, request, dtype, device)
    caches: dict[str, torch.Tensor] = {}
    for variant in plan.variants:
        corrections = (step_corrections(dispatcher.corrections, variant, plan.steps_of(variant)[0])
                       if plan.corrected else {})
        _, recorded = dispatcher.variants[variant.name](inputs, {n: caches[n] for n in variant.replay}, corrections)
        caches.update(recorded)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _FirstCall(Exception):
    """Raised by :func:`first_step_inputs`'s denoiser to leave the sampling loop at its first call."""


def first_step_inputs(spec, request, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """The denoiser inputs of the request's first step, as the family's own sampling loop builds them (noise,
    timestep, conditioning, guidance batch; FLUX's packed latents and embedded guidance)."""
    from ditcache.compiler.runtime.sampling import sample

    captured: dict[str, torch.Tensor] = {}

    def capture(inputs):
        captured.update(inputs)
        raise _FirstCall

    try:
        sample(capture, spec, request, dtype=dtype, device=device)
    except _FirstCall:
        pass
    return captured


# ---- phases ---------------------------------------------------------------------------------------------
def _schedule(job: dict):
    from ditcache.graphs.schedule import load_schedule

    return load_schedule(job["schedule_file"])


def _spec(row: RowSpec):
    from ditcache.graphs.registry import at_resolution, get_spec

    return at_resolution(get_spec(row.model), row.resolution, row.frames)


def phase_weights(job: dict) -> dict:
    """Random weights for ``job['model']`` saved once as safetensors."""
    from safetensors.torch import save_file

    from ditcache.graphs.registry import get_spec
    from ditcache.graphs.weights import load_model

    out = Path(job["out"])
    start = time.perf_counter()
    model, info = load_model(get_spec(job["model"]), random_weights=True, seed=int(job.get("seed", 0)))
    # the sin-cos position table is rebuilt by the model for its resolution: leave it out of the file
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()
             if not k.endswith("pos_embed.pos_embed")}
    with atomic_path(out, mkdir=True) as tmp:
        save_file(state, str(tmp), metadata={"source": info.source, "model": job["model"]})
    return {"status": "ok", "seconds": time.perf_counter() - start, "file": str(out), "bytes": out.stat().st_size}


def phase_build(job: dict) -> dict:
    """export_engines for a compiled row; its report (build seconds per graph, bytes on disk, validation)."""
    from ditcache.export.export_engines import ExportRequest, export_engines

    row = RowSpec.from_dict(job["row"])
    if row.threads:
        torch.set_num_threads(row.threads)
    request = ExportRequest(
        model=row.model, schedule=job["schedule_file"], out=job["engines_dir"], backend=row.backend,
        weights=row.weights, precision=row.precision, batch_size=row.num_images, guidance=_spec(row).cfg_batch(row.guidance),
        resolution=row.resolution, frames=row.frames, granularity=row.granularity, device=row.device, options=dict(row.options),
        validate=row.validate,
    )
    start = time.perf_counter()
    with skip_random_init():
        report = export_engines(request, log=log, progress=False)
    wall = time.perf_counter() - start
    graphs = [{"name": g.name, "status": g.status, "bytes": g.bytes, "build_s": g.seconds,
               "validation": g.validation} for g in report.graphs]
    validation = [g.validation for g in report.graphs if g.validation]
    log(f"export: {len(report.rebuilt)} built, {len(graphs) - len(report.rebuilt)} reused, {wall:.1f} s")
    return {
        "status": "ok",
        "export_wall_s": wall,
        "build_s": sum(g.seconds for g in report.graphs),  # as recorded when each graph was built
        "reused": len(graphs) - len(report.rebuilt),
        "graphs": graphs,
        "granularity": report.manifest.granularity,
        "artifact_bytes": sum(g.bytes for g in report.graphs),
        "validation_max_abs": max((v.get("max_abs", 0.0) for v in validation), default=None),
        "validation_min_cosine": min((v.get("cosine", 1.0) for v in validation), default=None),
        "build_peak_rss_bytes": process_peak_rss(),
    }


def phase_run(job: dict) -> dict:
    """Load, warm up, timed runs; final latents to ``job['latents_file']``."""
    from ditcache.compiler.backend import BuildSettings
    from ditcache.compiler.runtime.runner import eager_dispatcher
    from ditcache.graphs.planning import plan_for

    row = RowSpec.from_dict(job["row"])
    if row.threads:
        torch.set_num_threads(row.threads)
    spec = _spec(row)
    schedule = _schedule(job)
    plan = plan_for(schedule, spec)
    dtype = BuildSettings(row.precision, row.device).dtype
    result: dict[str, Any] = {"status": "ok", "threads": torch.get_num_threads()}

    start = time.perf_counter()
    if row.peer is not None:
        from .flow_peers import PeerRunner

        runner: _Runner = PeerRunner(row, spec, schedule, dtype)
        result["setup_s"] = time.perf_counter() - start
    elif row.backend == BACKEND_STOCK:
        runner = StockRunner(row, spec, schedule, dtype)
        result["setup_s"] = time.perf_counter() - start
    elif row.kind == "ditcache-eager":
        from ditcache.graphs.weights import load_model

        with skip_random_init():
            model, _ = load_model(spec, row.weights)
        model = model.to(torch.device(row.device), dtype).eval()
        runner = DispatcherRunner(row, spec, plan, eager_dispatcher(model, spec, plan), dtype)
        runner.param_count = sum(p.numel() for p in model.parameters())
        runner.weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        result["setup_s"] = time.perf_counter() - start
    else:
        from ditcache.export.load import load_engines

        with skip_random_init():
            loaded = load_engines(job["engines_dir"], weights=row.weights, device=row.device, schedule=schedule,
                                  images=row.num_images, guidance=_spec(row).cfg_batch(row.guidance),
                                  precision=row.precision, backend=row.backend)
        runner = DispatcherRunner(row, spec, loaded.plan, loaded.dispatcher, dtype)
        runner.param_count = parameter_count(row.weights)
        if runner.param_count is not None:
            runner.weights_bytes = runner.param_count * BYTES_PER[row.precision]
        result["load_s"] = time.perf_counter() - start
    log(f"setup {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    runner.warmup(row.warmup)
    result["warmup_s"] = time.perf_counter() - start
    log(f"warm-up ({row.warmup}) {result['warmup_s']:.1f} s")

    if row.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result["rss_before_runs_bytes"] = rss_bytes()
    peak_reset = reset_peak_rss()
    runs: list[float] = []
    steps: dict[str, list[float]] = {}
    first = latents = None
    max_diff = 0.0
    runner.timing = row.step_timing == "inline"
    for i in range(row.repeats):
        t0 = time.perf_counter()
        latents = runner.run()
        runs.append(time.perf_counter() - t0)
        for k, v in runner.step_seconds().items():
            steps.setdefault(k, []).extend(v)
        latents = latents.detach().float().cpu()
        if first is None:
            first = latents
        else:
            max_diff = max(max_diff, (latents - first).abs().max().item())
        log(f"run {i + 1}/{row.repeats}: {runs[-1]:.2f} s")
    if row.step_timing == "separate":
        runner.timing = True
        runner.run()
        steps = runner.step_seconds()
        log("step-timing run done")
    runner.timing = False
    extra = runner.measurements()  # before the notes: it may add some
    result.update(
        runs_s=runs,
        step_seconds=steps,
        repeat_max_abs_diff=max_diff,
        peak_rss_bytes=process_peak_rss(),
        sampling_peak_rss_bytes=peak_rss_since_reset() if peak_reset else None,
        weights_bytes=runner.weights_bytes,
        param_count=runner.param_count,
        notes=list(runner.notes),
        **extra,
    )
    if not peak_reset:
        result["notes"].append("could not reset the peak-RSS mark: sampling peak not measured")
    if row.device.startswith("cuda"):
        result["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    with atomic_path(job["latents_file"], mkdir=True) as tmp:
        torch.save(latents, tmp)
    result["latents_file"] = job["latents_file"]
    return result


PHASES = {"weights": phase_weights, "build": phase_build, "run": phase_run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", required=True, choices=sorted(PHASES))
    parser.add_argument("--job", required=True, help="job JSON written by run_benchmarks")
    parser.add_argument("--result", required=True, help="result JSON to write")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    return run_phase(PHASES[args.phase], job, Path(args.result))


def run_phase(phase: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any], result_path: Path) -> int:
    """Run one worker phase and write its result JSON; a failure becomes the row's status (exit code 1)."""
    try:
        result = phase(job)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported as the row's status, the runner goes on
        traceback.print_exc()
        result = {"status": f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:400],
                  "traceback": traceback.format_exc()[-4000:]}
        code = 1
    write_json(result_path, result)
    return code


if __name__ == "__main__":
    sys.exit(main())
