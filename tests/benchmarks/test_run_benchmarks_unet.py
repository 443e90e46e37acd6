"""The benchmark runner on a U-Net: benchmarks/configs/tiny-unet.yaml (unet-tiny, random weights, synthetic prompt
embeddings): stock StableDiffusionPipeline, ditcache eager full and block-cache rows; and the
sd15-unet CPU configuration parses into the rows it promises."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ditcache.benchmarks.bench_config import build_rows, load_config
from ditcache.benchmarks.run_benchmarks import main

pytest.importorskip("transformers", reason="diffusers' StableDiffusionPipeline (the stock row) needs transformers")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_tiny_unet_rows(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(REPO / "benchmarks" / "configs" / "tiny-unet.yaml"), "--out-dir", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"diffusers/fp32/full-6", "eager/fp32/full-6", "eager/fp32/bc-6"}
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    stock, full, cached = rows["diffusers/fp32/full-6"], rows["eager/fp32/full-6"], rows["eager/fp32/bc-6"]
    assert any("StableDiffusionPipeline" in n for n in stock["notes"])
    assert full["psnr_vs_stock_db"] == "inf"  # ditcache's eager full schedule is StableDiffusionPipeline's computation
    assert stock["images"] == 2 and stock["model_batch"] == 4
    assert cached["theoretical_speedup"] > 1 and math.isfinite(cached["psnr_vs_full_db"])


def test_sd15_cpu_config_rows():
    rows = build_rows(load_config(REPO / "benchmarks" / "configs" / "cpu-sd15-unet.yaml"))
    assert all(r.resolution == 256 and r.class_labels == () for r in rows)
    ids = {r.id for r in rows}
    assert "diffusers/fp32/full-20" in ids and "eager/fp32/bc-aggressive-20" in ids
    assert not [r for r in rows if r.backend == "diffusers" and r.skip]  # the stock StableDiffusionPipeline row runs
