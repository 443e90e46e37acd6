"""Peer rows of the benchmark runner: diffusers' FirstBlockCache and cache-dit's DBCache on the stock pipeline.

A matrix group with a ``peer`` key names one method; it becomes one row per threshold x precision::

    - {peer: fbc, thresholds: [0.05, 0.12], estimate_s: 60}              # eager, fp32
    - {peer: dbcache, Fn: 1, Bn: 0, thresholds: [0.08], warmup: 2}
    - {peer: none, compiled: true, precisions: [bf16]}                   # the stock pipeline under torch.compile
    - {peer: fbc, thresholds: [0.12], compiled: true, precisions: [bf16]}

Rows run the stock row's pipeline (same weights, embeddings, scheduler, steps, seed; latents out) with the peer
installed on its transformer (benchmarks/flow_peers.py). Their *full reference* is the stock row (eager peers) or
the ``peer: none`` compiled row of the same precision (compiled peers), so "× vs full" is what the caching gains
and fidelity is against the same pipeline uncached. Blocks and MACs are counted, not planned: a peer decides at run
time. This module is the light half (config, references, report numbers); nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Mapping

PEER_METHODS = {"none": "stock pipeline (no cache)", "fbc": "diffusers FirstBlockCache", "dbcache": "cache-dit DBCache"}
_PEER_KEYS = {"peer", "thresholds", "compiled", "precisions", "schedule", "Fn", "Bn", "warmup", "skip", "repeats",
              "estimate_s", "note"}
PEER_KIND = "peer"
PEERS_NOTE = ("peer rows (fbc: diffusers FirstBlockCache, dbcache: cache-dit DBCache; +compile: torch.compile of the "
              "transformer) run the stock pipeline row's pipeline, weights, embeddings, steps and seed with the peer "
              "installed on its transformer (benchmarks/flow_peers.py); their full reference is the stock row (eager) "
              "or the uncached stock pipeline under torch.compile (diffusers+compile, same precision); blocks run "
              "(per sample of a step's batch, summed over the steps) and MACs are counted on leaf layers in the timed "
              "runs of eager peer rows and planned for every other row; dynamo breaks / recompiles: graph breaks and "
              "recompilations during the warm-up, recompilations during the timed runs in brackets (torch._dynamo "
              "counters; compiled ditcache rows run exported graphs; inductor-jit compiles them with fullgraph=True: "
              "no graph break)")


def parse_peer_group(group: Mapping[str, Any], where: str, schedules: Mapping[str, Any], default_schedule: str | None,
                     error: type[Exception]) -> dict[str, Any]:
    """A validated peer group: the matrix entry with its rows' settings listed under ``rows``."""
    unknown = sorted(set(group) - _PEER_KEYS)
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r} in a peer group (allowed: {', '.join(sorted(_PEER_KEYS))})")
    method = str(group["peer"])
    if method not in PEER_METHODS:
        raise error(f"{where}: peer {method!r} is not one of {', '.join(PEER_METHODS)}")
    schedule = str(group.get("schedule") or default_schedule or "")
    if schedule not in schedules:
        raise error(f"{where}: a peer group runs a full schedule: give 'schedule' (one of {', '.join(schedules)}) or "
                    f"a baseline schedule")
    if schedules[schedule].load().kind != "full":
        raise error(f"{where}: peer rows run the stock pipeline's full schedule; {schedule!r} is not full")
    thresholds = group.get("thresholds", [None] if method == "none" else None)
    if method != "none" and (not isinstance(thresholds, list) or not thresholds):
        raise error(f"{where}: peer {method!r} needs 'thresholds: [relative L1, ...]'")
    if method == "none" and group.get("thresholds") is not None:
        raise error(f"{where}: peer 'none' (the uncached stock pipeline) takes no thresholds")
    precisions = [str(p) for p in (group.get("precisions") or ["fp32"])]
    from ditcache.compiler.backend import PRECISIONS

    if any(p not in PRECISIONS for p in precisions):
        raise error(f"{where}: precisions must be among {', '.join(PRECISIONS)} (got {precisions})")
    settings = {"Fn": int(group.get("Fn", 1)), "Bn": int(group.get("Bn", 0)), "warmup": int(group.get("warmup", 2))} \
        if method == "dbcache" else {}
    rows = [{"method": method, "threshold": None if t is None else float(t), "compiled": bool(group.get("compiled")),
             **settings, "precision": p} for t in thresholds for p in precisions]
    return {"peer": method, "schedule": schedule, "rows": rows, "skip": group.get("skip"),
            "repeats": group.get("repeats"), "estimate_s": group.get("estimate_s"), "note": group.get("note")}


def peer_backend(peer: Mapping[str, Any]) -> str:
    """The row's backend column (``fbc``, ``dbcache+compile``; the uncached stock pipeline is ``diffusers``)."""
    base = "diffusers" if peer["method"] == "none" else peer["method"]
    return base + ("+compile" if peer["compiled"] else "")


def peer_label(peer: Mapping[str, Any]) -> str:
    """The first part of the row id: backend with the peer's settings (``fbc-0.05``, ``dbcache-F1B0-0.08+compile``)."""
    if peer["method"] == "none":
        return peer_backend(peer)
    settings = f"-F{peer['Fn']}B{peer['Bn']}" if peer["method"] == "dbcache" else ""
    return f"{peer['method']}{settings}-{float(peer['threshold'])!r}" + ("+compile" if peer["compiled"] else "")


def unavailable(peer: Mapping[str, Any], model_class: str) -> str | None:
    """Why a peer row cannot run (None: it can), decided without building the model."""
    if peer["method"] == "dbcache":
        from .peers import cache_dit_unavailable

        return cache_dit_unavailable()
    if peer["method"] == "fbc":
        import diffusers
        from diffusers.models.cache_utils import CacheMixin

        if not issubclass(getattr(diffusers, model_class), CacheMixin):
            return (f"diffusers {diffusers.__version__}'s FirstBlockCache does not support {model_class}: the class "
                    f"has no CacheMixin (no enable_cache) and its pipeline sets no cache_context (what the hooks do "
                    f"when applied directly: docs/families.md, the peers on these pipelines)")
    return None


def reference(row: Mapping[str, Any], ok: list[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, str]:
    """The full reference of a peer row among the measured rows, and a note saying which it is."""
    peer = row["peer"]
    stock = next((o for o in ok if o["kind"] == "stock" and o["steps"] == row["steps"]
                  and o["precision"] == row["precision"]), None) or next(
        (o for o in ok if o["kind"] == "stock" and o["steps"] == row["steps"]), None)
    if not peer["compiled"] or peer["method"] == "none":
        return stock, ("" if stock is None else f"full reference: the stock pipeline row {stock['id']}")
    compiled = next((o for o in ok if o["kind"] == PEER_KIND and o["peer"]["method"] == "none"
                     and o["peer"]["compiled"] and o["precision"] == row["precision"] and o["steps"] == row["steps"]),
                    None)
    if compiled is not None:
        return compiled, f"full reference: the uncached stock pipeline under torch.compile, {compiled['id']}"
    return stock, ("" if stock is None else f"full reference: the eager stock row {stock['id']} (no compiled uncached "
                                            f"stock row was measured: × vs full includes the compiler's gain)")


def counted_numbers(counts: Mapping[str, Any] | None) -> dict[str, Any]:
    """Report fields of a peer row from its counted blocks (flow_peers.count_numbers); empty when not counted."""
    if not counts:
        return {}
    return {k: counts[k] for k in ("gmacs_per_image", "mac_fraction", "theoretical_speedup", "blocks_run",
                                   "blocks_full") if counts.get(k) is not None}
