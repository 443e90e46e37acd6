"""eval_quality on the shipped U-Net (``--model unet-fmnist``) and the U-Net change curves by layer type."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CALIBRATED = Path(__file__).resolve().parents[2] / "schedules" / "unet-fmnist-calibrated"
needs_schedules = pytest.mark.skipif(
    not all((CALIBRATED / f"blockcache-{t}x-closed-form.yaml").is_file() for t in ("1.08", "1.11")),
    reason="the calibrated unet-fmnist schedules are incomplete: bash schedules/unet-fmnist-calibrated/make.sh")


@needs_schedules
def test_unet_schedules_build_plans_at_their_targets():
    from ditcache.benchmarks import eval_quality
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs import costs_for, get_spec

    table, out = eval_quality.MODELS["unet-fmnist"]
    assert out.name == "quality_unet_fmnist" and table is eval_quality.UNET_SCHEDULES
    spec = get_spec("unet-fmnist")
    costs = costs_for(spec, 2)
    present = {name: entry for name, (_, entry) in table.items()
               if not name.endswith("-tr") or (CALIBRATED / Path(entry).name).is_file()}  # trained: optional
    speed = {name: plan_for(eval_quality.load_entry(name, entry), spec).theoretical_speedup(costs)
             for name, entry in present.items()}
    assert speed["full"] == 1.0
    for target in ("1.05", "1.08", "1.11"):  # the attention layers are 12% of the MACs: at most 1.14x
        assert speed[f"blockcache-{target}x"] == pytest.approx(float(target), abs=0.01)
    for target in ("1.08", "1.11"):
        name = f"blockcache-{target}x"
        assert speed[f"{name}-cf"] == speed[name]
        assert eval_quality.load_entry(name, table[f"{name}-cf"][1]).corrections.name.endswith(
            "closed-form.safetensors")
        if f"{name}-tr" in speed:
            assert speed[f"{name}-tr"] == speed[name]


@needs_schedules
def test_eval_quality_on_unet_fmnist_without_fid(tmp_path):
    from ditcache.benchmarks import eval_quality

    out = tmp_path / "q"
    assert eval_quality.main(["--model", "unet-fmnist", "--n", "4", "--batch-size", "4", "--schedules",
                              "blockcache-1.11x-cf", "--no-fid", "--no-progress", "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache")]) == 0
    record = json.loads((out / "results.json").read_text())
    rows = {r["schedule"]: r for r in record["results"]}
    assert record["model"] == "unet-fmnist" and set(rows) == {"full", "blockcache-1.11x-cf"}
    assert rows["blockcache-1.11x-cf"]["cosine_vs_full"] < 1.0 and rows["blockcache-1.11x-cf"]["psnr_vs_full_db"] > 0
    assert "on unet-fmnist" in (out / "results.md").read_text()
    assert eval_quality.main(["--model", "unet-fmnist", "--n", "4", "--schedules", "delta-N2-Nc8", "--no-fid",
                              "--out", str(tmp_path / "x")]) == 2  # Δ-DiT entries are the DiT's table


def test_unet_curves_by_layer_type(tmp_path):
    from ditcache.benchmarks import unet_curves

    assert unet_curves.main(["--random-weights", "--steps", "4", "--seeds", "0", "--classes", "1", "2",
                             "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "curves_by_type.json").read_text())
    assert data["meta"]["kinds"].count("attention") == 6 and data["meta"]["kinds"].count("resnet") == 10
    assert data["meta"]["measured"].startswith("16 given modules")
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert set(summary) == {"attention", "resnet"} and (tmp_path / "curves_by_type.png").stat().st_size > 0
