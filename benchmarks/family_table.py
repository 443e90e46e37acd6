#!/usr/bin/env python
"""Stock vs ditcache vs peers, one compact markdown table per benchmark run (docs/families.md's tables).

Reads the ``results.json`` that ``run_benchmarks`` wrote and keeps, per row, what the comparison needs: what ran
(stock pipeline, ditcache backend, peer), its latency, its speedup over its own full reference and over the stock
pipeline, the blocks it ran, how far its latents moved from its full reference, and, for rows under
``torch.compile``, dynamo's graph breaks and recompilations. Skipped and failed rows keep their reason.

Examples:
    python benchmarks/family_table.py benchmarks/results/cpu-flux benchmarks/results/cpu-sd3 benchmarks/results/cpu-wan
    python benchmarks/family_table.py benchmarks/results/cpu-flux --out /tmp/flux.md
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

HEADER = ("| row | what | latency s | × vs its full | × vs stock | blocks run / full | PSNR vs its full dB | "
          "compile / export s | dynamo breaks / recompiles |")
RULE = "|---|---|---:|---:|---:|---:|---:|---:|---|"


@dataclass(frozen=True)
class TableRow:
    """One benchmark row, reduced to the comparison's columns (None: not measured for this row)."""

    row: str
    what: str
    status: str
    latency_s: float | None
    vs_full: float | None
    vs_stock: float | None
    blocks: str
    psnr_db: float | str | None
    build_s: float | None
    dynamo: str


def describe(row: Mapping[str, Any]) -> str:
    """Who ran the row: the stock pipeline, ditcache on a backend, or a peer (eager or under torch.compile)."""
    peer = row.get("peer") or {}
    compiled = " under torch.compile" if peer.get("compiled") else ""
    method = peer.get("method")
    if method == "none":
        return "stock pipeline" + compiled
    if method == "fbc":
        return f"diffusers FirstBlockCache {peer['threshold']:g}{compiled}"
    if method == "dbcache":
        return f"cache-dit DBCache F{peer.get('Fn')}B{peer.get('Bn')} {peer['threshold']:g}{compiled}"
    if row.get("backend") == "diffusers":
        return "stock pipeline"
    return f"ditcache {row.get('backend')} {row.get('precision')}, {row.get('schedule_kind') or row.get('schedule')}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def reduce_row(row: Mapping[str, Any]) -> TableRow:
    """The comparison's columns of one results.json row."""
    run, full = row.get("blocks_run"), row.get("blocks_full")
    blocks = "–" if run is None or full is None else f"{float(run):g} / {full}"
    breaks, recompiles, steady = row.get("graph_breaks"), row.get("recompiles"), row.get("steady_recompiles")
    dynamo = "–" if breaks is None and recompiles is None else f"{breaks} / {recompiles} ({steady})"
    psnr = row.get("psnr_vs_full_db")
    psnr = psnr if isinstance(psnr, str) else _number(psnr)
    build = _number(row.get("export_wall_s")) or _number(row.get("build_s"))
    if (row.get("peer") or {}).get("compiled"):
        build = _number(row.get("warmup_s"))  # torch.compile compiles during the warm-up runs
    return TableRow(row["id"], describe(row), str(row.get("status", "?")), _number(row.get("latency_median_s")),
                    _number(row.get("speedup_vs_full")), _number(row.get("speedup_vs_stock")), blocks, psnr, build,
                    dynamo)


def _cell(value: float | str | None, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞ (identical)" if value in ("inf", "Infinity") else value
    return f"{value:.{digits}f}"


def markdown(record: Mapping[str, Any], source: str) -> str:
    """The table of one run, with its command, date and machine."""
    machine = record.get("machine", {})
    lines = [f"`{record.get('command', '?')}` → `{source}/results.md` ({machine.get('date_utc', '?')}, "
             f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores)", "", HEADER, RULE]
    for r in map(reduce_row, record["rows"]):
        if r.status != "ok":
            lines.append(f"| {r.row} | {r.what} | {r.status.split(':')[0]} | | | | | | |")
            continue
        lines.append(f"| {r.row} | {r.what} | {_cell(r.latency_s, 2)} | {_cell(r.vs_full, 2)} | "
                     f"{_cell(r.vs_stock, 2)} | {r.blocks} | {_cell(r.psnr_db, 2)} | {_cell(r.build_s, 0)} | "
                     f"{r.dynamo} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="run_benchmarks output folders (each with results.json)")
    parser.add_argument("--out", default=None, help="write the tables here instead of stdout")
    args = parser.parse_args(argv)
    parts = []
    for folder in map(Path, args.results):
        path = folder / "results.json"
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read {path}: {exc}; run run_benchmarks with --out-dir {folder} first",
                  file=sys.stderr)
            return 2
        parts.append(f"### {record.get('config', {}).get('name', folder.name)}\n\n" + markdown(record, str(folder)))
    text = "\n".join(parts)
    if args.out:
        from ditcache.compiler.atomic import write_atomic

        write_atomic(Path(args.out), text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
