"""benchmarks/family_table.py: the docs' stock vs ditcache vs peers tables from a run's results.json."""

from __future__ import annotations

import json

from ditcache.benchmarks import family_table


def _record() -> dict:
    stock = {"id": "diffusers/fp32/full-6", "status": "ok", "backend": "diffusers", "peer": None,
             "latency_median_s": 34.3, "speedup_vs_full": 1.0, "speedup_vs_stock": 1.0, "blocks_run": 36,
             "blocks_full": 36, "psnr_vs_full_db": None}
    ours = {"id": "inductor/bf16/delta-6", "status": "ok", "backend": "inductor", "precision": "bf16",
            "schedule_kind": "delta-dit", "peer": None, "latency_median_s": 11.93, "speedup_vs_full": 1.18,
            "speedup_vs_stock": 2.88, "blocks_run": 28, "blocks_full": 36, "psnr_vs_full_db": 65.88,
            "export_wall_s": 98.7, "build_s": 50.2}
    peer = {"id": "fbc-0.12+compile/bf16/full-6", "status": "ok", "backend": "fbc+compile",
            "peer": {"method": "fbc", "threshold": 0.12, "compiled": True}, "latency_median_s": 15.0,
            "speedup_vs_full": 0.9, "speedup_vs_stock": 2.3, "blocks_run": None, "blocks_full": 36,
            "psnr_vs_full_db": "inf", "warmup_s": 80.0, "graph_breaks": 5, "recompiles": 7, "steady_recompiles": 0}
    skipped = {"id": "dbcache-F1B0-0.08+compile/bf16/full-6", "status": "skipped: time budget: 628 s of 720 s used",
               "peer": {"method": "dbcache", "threshold": 0.08, "compiled": True, "Fn": 1, "Bn": 0}}
    return {"command": "python -m ditcache.benchmarks.run_benchmarks --config c.yaml", "config": {"name": "c"},
            "machine": {"cpu": "AMD EPYC", "cores": 2, "date_utc": "2026-12-01"}, "rows": [stock, ours, peer, skipped]}


def test_each_row_keeps_what_the_comparison_needs():
    lines = family_table.markdown(_record(), "benchmarks/results/c").splitlines()
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "/" in line[:40]}
    assert "| stock pipeline | 34.30 | 1.00 | 1.00 | 36 / 36 | – |" in rows["diffusers/fp32/full-6"]
    assert "ditcache inductor bf16, delta-dit | 11.93 | 1.18 | 2.88 | 28 / 36 | 65.88 | 99 | – |" in \
        rows["inductor/bf16/delta-6"]  # the export's wall time, not the in-process build
    peer = rows["fbc-0.12+compile/bf16/full-6"]
    assert "FirstBlockCache 0.12 under torch.compile" in peer and "∞ (identical)" in peer
    assert "| – | ∞ (identical) | 80 | 5 / 7 (0) |" in peer  # no block count under compile; compile = warm-up
    assert "| skipped |" in rows["dbcache-F1B0-0.08+compile/bf16/full-6"]


def test_the_script_reads_folders_and_refuses_a_missing_record(tmp_path, capsys):
    good = tmp_path / "run"
    good.mkdir()
    (good / "results.json").write_text(json.dumps(_record()))
    out = tmp_path / "tables.md"
    assert family_table.main([str(good), "--out", str(out)]) == 0
    assert out.read_text().startswith("### c\n") and "inductor/bf16/delta-6" in out.read_text()
    assert family_table.main([str(tmp_path / "nothing")]) == 2
    assert "cannot read" in capsys.readouterr().err
