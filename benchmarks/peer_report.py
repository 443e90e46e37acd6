"""The peer comparison's results.md: the table of every row, which ditcache rows match each peer, notes per row."""

from __future__ import annotations

from typing import Any

from .peer_adaptive import summary as adaptive_summary


def _f(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _matched_table(record: dict[str, Any]) -> list[str]:
    """Markdown lines: for every peer row, the ditcache rows at least as fast and as good."""
    def names(v):
        return "-" if v is None else (", ".join(v) if v else "**none** (the peer wins)")

    lines = ["", "## Which ditcache schedules match or beat each peer", "",
             "A ditcache row matches a peer when it is at least as fast (measured speedup over the full row, eager "
             "and compiled apart) and at least as good (FID where measured, else PSNR vs full).", "",
             "| peer row | eager × | matched eager by | compiled × | matched compiled by |",
             "| --- | ---: | --- | ---: | --- |"]
    for r in record["rows"]:
        if r["method"] != "ditcache":
            lines.append(f"| {r['name']} | {_f(r['eager_speedup'])} | {names(r.get('matched_by_eager'))} | "
                         f"{_f(r['compiled_speedup'])} | {names(r.get('matched_by_compiled'))} |")
    return [*lines, ""]


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    q = record.get("quality") or {}
    lines = [f"# Peers side by side: {record['name']}", "",
             f"Command (from the repository root): `{record['command']}`", "",
             f"- model `{record['model']}`, {record['steps']} {record['scheduler']} steps, guidance {record['guidance']}; "
             f"every row samples through ditcache's own loop (`compiler/runtime/sampling.py`): same scheduler, noise, seeds",
             f"- quality: N = {q.get('n')} class-balanced samples in batches of {q.get('batch_size')} (per-sample seeds "
             f"as benchmarks/eval_quality.py), PSNR / cosine vs the `full` row" if q else
             "- quality: fidelity of the timing batch vs the `full` row (no FID)",
             f"- FID: {record['fid']['package']} {record['fid']['version']} Inception vs {record['fid']['reference']}; "
             f"real-vs-real floor at this N: {record['fid']['floor']:.2f}; ± paired bootstrap std "
             f"({record['fid']['bootstrap_draws']} draws)" if record.get("fid") else "- FID: not computed",
             f"- latency: one sampling run of classes {record['timing']['classes']} (model batch doubled by guidance), "
             f"median of {record['timing'].get('repeats')} after {record['timing'].get('warmup', 1)} warm-up run(s); "
             f"compiled rows: torch.compile, first run (compile) reported apart",
             f"- machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, threads {m['torch_threads']}; load "
             f"average at the report {m['loadavg_1_5_15']}; the `load` column is the 1-min load average when the "
             f"row's timing started (shared machine: other agents' jobs ran at the same time)",
             "- blocks: calls of each block's attention `to_q` and MLP output layer, counted by forward pre-hooks "
             "during the quality runs (ditcache's segments and every peer counted the same way); MACs follow from the "
             "counts (graphs/macs.py, attention apart from the rest of a block)", ""]
    if record.get("random_weights"):
        lines += ["- RANDOM weights: timings and block counts are real; PSNR only says how far a row moves from the "
                  "full run on the same noise (a row that never caches is identical to it), so quality is compared "
                  "on the reference model's config, not here", ""]
    lines += ["| row | family | status | blocks run / full | attn run | MACs × | eager s | eager × | eager ÷ MACs | "
              "compiled s | compiled × | compile s | breaks | graphs | recompiles (steady) | PSNR dB | cosine | FID | "
              "FID − full | load |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
              "---: | ---: | ---: | ---: | ---: |"]
    for r in record["rows"]:
        full_blocks = r["blocks_full_per_run"]
        blocks = (f"{r['blocks_run_per_run']:.1f} / {full_blocks:.0f}" if r["blocks_run_per_run"] is not None
                  else "-")
        recompiles = "-" if r["recompiles"] is None else f"{r['recompiles']} ({r['steady_recompiles']})"
        status = "ok" if r["status"] == "ok" else r["status"][:120].replace("|", "/")
        fid = "-" if r["fid"] is None else (f"{r['fid']:.2f}" + (f" ± {r['fid_boot_std']:.2f}"
                                                                 if r["fid_boot_std"] else ""))
        dfid = "-" if r["fid_delta_vs_full"] is None else (
            f"{r['fid_delta_vs_full']:+.2f}" + (f" ± {r['fid_delta_boot_std']:.2f}" if r["fid_delta_boot_std"] else ""))
        lines.append(
            f"| {r['name']} | {r['family']} | {status} | {blocks} | {_f(r['attn_run_per_run'], 1)} | "
            f"{_f(r['mac_speedup'])} | {_f(r['eager_median_s'], 3)} | {_f(r['eager_speedup'])} | "
            f"{_f(r.get('eager_per_mac'))} | {_f(r['compiled_median_s'], 3)} | {_f(r['compiled_speedup'])} | "
            f"{_f(r['compile_warmup_s'], 1)} | "
            f"{_f(r['graph_breaks'])} | {_f(r['graphs'])} | {recompiles} | {_f(r['psnr_vs_full_db'])} | "
            f"{_f(r['cosine_vs_full'], 5)} | {fid} | {dfid} | {_f(r['loadavg_1m'])} |")
    lines += ["", "`eager ÷ MACs`: how much of the counted compute a row saves turns into eager time (1 = all of "
              "it; below 1: the method's own overhead, or steps it skips that cost less than average)."]
    if record.get("random_weights"):
        lines += ["", "## Which ditcache schedules match or beat each peer", "",
                  "Not judged on random weights (no meaningful quality): see the reference model's results.", ""]
    else:
        lines += _matched_table(record)
    lines += ["## Notes per row", ""]
    for r in record["rows"]:
        extra = []
        if r.get("graph_break_reasons"):
            extra.append("graph breaks: " + "; ".join(r["graph_break_reasons"][:3]))
        if r.get("blocks_per_step"):
            extra.append(f"blocks per step (first run): {r['blocks_per_step']}")
        each = r.get("blocks_run_each_run") or []
        if len(set(each)) > 1:  # decided per batch (adaptive rows, run-time deciders)
            extra.append(f"blocks run per run vary: {min(each):g}–{max(each):g} (counted, {len(each)} runs)")
        extra += [n for n in (adaptive_summary(r.get("info"), "eager"),
                              adaptive_summary(r.get("compiled_info"), "compiled")) if n]
        info = r.get("info") or {}
        if info.get("cache_dit_cached_steps") is not None:
            extra.append(f"cache-dit summary: cached steps {info['cache_dit_cached_steps']}")
        if r.get("error"):
            extra.append(f"error: {r['error']}")
        if r["notes"] or extra:
            lines.append(f"- **{r['name']}**: " + " · ".join([*r["notes"], *extra]).replace("|", "/"))
    lines.append("")
    return "\n".join(lines)
