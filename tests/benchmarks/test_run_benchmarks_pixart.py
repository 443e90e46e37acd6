"""The benchmark runner on a text-conditioned model: benchmarks/configs/tiny-pixart.yaml (pixart-tiny, random
weights, synthetic prompt embeddings): stock PixArtAlphaPipeline, ditcache eager full and Δ-DiT rows."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from ditcache.benchmarks.bench_config import ConfigError, build_rows, load_config, parse_config
from ditcache.benchmarks.run_benchmarks import main

pytest.importorskip("transformers", reason="diffusers' PixArtAlphaPipeline (the stock row) needs transformers")

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "benchmarks" / "configs" / "tiny-pixart.yaml"


@pytest.mark.e2e
def test_tiny_pixart_rows(tmp_path):
    out = tmp_path / "out"
    assert main(["--config", str(TINY), "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--only", "diffusers/", "eager/", "--quiet"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"diffusers/fp32/full-6", "eager/fp32/full-6", "eager/fp32/delta-6"}
    assert all(r["status"] == "ok" for r in rows.values()), {k: r["status"] for k, r in rows.items()}
    stock, full, delta = rows["diffusers/fp32/full-6"], rows["eager/fp32/full-6"], rows["eager/fp32/delta-6"]
    assert full["psnr_vs_stock_db"] == "inf"  # ditcache's eager full schedule is PixArtAlphaPipeline's computation
    assert stock["images"] == 2 and stock["model_batch"] == 4
    assert any("PixArtAlphaPipeline" in n for n in stock["notes"]) and any("synthetic" in n for n in stock["notes"])
    assert delta["theoretical_speedup"] > 1 and math.isfinite(delta["psnr_vs_full_db"]) and delta["cosine_vs_full"] < 1


def test_pixart_configs_parse_and_refuse_classes(tmp_path):
    rows = build_rows(load_config(TINY))
    assert all(r.class_labels == () and r.num_images == 2 for r in rows)
    cpu = build_rows(load_config(REPO / "benchmarks" / "configs" / "cpu-pixart.yaml"))
    assert {r.schedule for r in cpu} == {"full-20", "delta-20"} and all(r.resolution == 128 for r in cpu)
    base = {"model": "pixart-tiny", "random_weights": True, "schedules": {"f": {"kind": "full", "steps": 2}},
            "matrix": [{"backends": ["eager"], "schedules": ["f"]}]}
    with pytest.raises(ConfigError, match="text-conditioned: drop 'classes'"):
        parse_config({**base, "classes": [1]})
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config({**base, "embeddings": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ConfigError, match="takes 'classes'"):
        parse_config({**base, "model": "dit-tiny", "embeddings": str(TINY)})
    dit_row = build_rows(parse_config({**base, "model": "dit-tiny"}))[0]
    old_fields = {k: v for k, v in dit_row.to_dict().items()
                  if k not in ("skip", "estimate_s", "note", "images", "embeddings", "frames", "peer")}
    old_key = hashlib.sha256(json.dumps(old_fields, sort_keys=True).encode()).hexdigest()[:16]
    assert dit_row.key() == old_key  # --resume still finds class-model rows measured before the text fields
