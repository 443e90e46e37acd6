"""The main job: eager full vs compiled Δ-DiT-cached sampling on the shipped model, timed, with a side-by-side grid."""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ditcache.compiler.atomic import write_atomic, write_json_atomic
from ditcache.images import cosine, decode, grid, psnr, save_png, to_uint8
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.graphs import costs_for, full_schedule, get_spec, load_model, parse_schedule
from ditcache.graphs.planning import plan_for

DEMO_MODEL = "dit-fmnist"
DEMO_SCHEDULE = {"kind": "delta-dit", "steps": 20, "boundary": 10, "interval": 2, "cached_blocks": 8,
                 "cache": "offset"}  # = schedules/fmnist-delta-20.yaml


def _timed(dispatcher, spec, request, repeats: int) -> tuple[torch.Tensor, list[float]]:
    sample_with_plan(dispatcher, spec, request)  # warm-up
    seconds, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = sample_with_plan(dispatcher, spec, request)
        seconds.append(time.perf_counter() - start)
    return out, seconds


def _export(args: argparse.Namespace, schedule_file: Path, images: int):
    """Export (or reuse) the Δ-DiT engines into ``<out>/engines`` and load them with the compiled runner."""
    from ditcache.export.export_engines import ExportRequest, export_engines
    from ditcache.export.load import load_engines
    from ditcache.graphs import load_schedule

    engines = Path(args.out) / "engines"
    print(f"\nexport-engines --model {DEMO_MODEL} --schedule {schedule_file} --backend {args.backend} --out {engines}")
    report = export_engines(ExportRequest(DEMO_MODEL, schedule_file, engines, backend=args.backend,
                                          weights=args.weights, batch_size=images), progress=False)
    print(report.summary())
    loaded = load_engines(engines, weights=args.weights, schedule=load_schedule(schedule_file), images=images,
                          guidance=True)
    return loaded, report


def run_demo(args: argparse.Namespace) -> int:
    spec = get_spec(DEMO_MODEL)
    model, info = load_model(spec, args.weights)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule_file = out / "schedule.yaml"
    write_atomic(schedule_file, "# the demo's Δ-DiT schedule (= schedules/fmnist-delta-20.yaml)\n"
                 + yaml.safe_dump(DEMO_SCHEDULE, sort_keys=False))
    schedule = parse_schedule(DEMO_SCHEDULE, source=str(schedule_file))
    request = SampleRequest(tuple(range(spec.num_classes)), schedule.steps, 4.0, args.seed, "ddim")
    costs = costs_for(spec, request.denoiser_batch(spec))
    plans = {"eager full": plan_for(full_schedule(schedule.steps), spec), "eager Δ-DiT": plan_for(schedule, spec)}
    print(f"model {spec.name}: {spec.description}\n  weights {info.source} (sha256 {info.sha256[:12]})")
    print(f"sampling {len(request.class_labels)} images (one per class), {request.steps} DDIM steps, "
          f"guidance {request.guidance_scale}, seed {request.seed}, fp32 on {torch.get_num_threads()} CPU threads")
    print(plans["eager Δ-DiT"].table(costs))
    dispatchers = {name: eager_dispatcher(model, spec, plan) for name, plan in plans.items()}
    compiled_name = f"{args.backend} Δ-DiT"
    loaded, report = _export(args, schedule_file, len(request.class_labels))
    plans[compiled_name], dispatchers[compiled_name] = loaded.plan, loaded.dispatcher
    results, latents = {}, {}
    for name, plan in plans.items():
        latents[name], seconds = _timed(dispatchers[name], spec, request, args.repeats)
        results[name] = {"median_s": float(np.median(seconds)), "runs_s": seconds,
                         "gmacs": plan.total_macs(costs) / 1e9, "variants": [v.name for v in plan.variants]}
    images = {k: decode(v, spec) for k, v in latents.items()}
    full = results["eager full"]
    for name in list(plans)[1:]:
        results[name].update(psnr_db=psnr(images[name], images["eager full"]),
                             cosine=cosine(latents[name], latents["eager full"]))
    print(f"\n{'run':<22}{'median s':>10}{'GMACs':>10}{'speedup':>9}{'MAC ratio':>11}{'PSNR vs full':>14}")
    for name, r in results.items():
        speedup = full["median_s"] / r["median_s"]
        ratio = full["gmacs"] / r["gmacs"]
        quality = f"{r['psnr_db']:.2f} dB" if "psnr_db" in r else "-"
        print(f"{name:<22}{r['median_s']:>10.3f}{r['gmacs']:>10.2f}{speedup:>8.2f}x{ratio:>10.2f}x{quality:>14}")
    tiles = np.concatenate([to_uint8(images["eager full"]), to_uint8(images[compiled_name])])
    save_png(grid(tiles, columns=len(request.class_labels)), out / "full_vs_cached.png", scale=3)
    record = {"model": spec.name, "weights_sha256": info.sha256, "schedule": plans["eager Δ-DiT"].schedule,
              "request": request.__dict__, "results": results, "engines": str(report.directory),
              "export_s": report.seconds, "rebuilt": report.rebuilt,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads()}
    write_json_atomic(out / "demo.json", record, default=list)
    print(f"\nwrote {out / 'full_vs_cached.png'} (top row: eager full, bottom row: {compiled_name}, compiled) and "
          f"{out / 'demo.json'}")
    return 0
