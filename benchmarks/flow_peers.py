"""A peer's cache on the stock pipeline, timed as the stock row is: the worker half of benchmarks/bench_peers.py.

:class:`PeerRunner` is :class:`~ditcache.benchmarks.bench_worker.StockRunner` (same weights, pipeline, embeddings,
scheduler, steps and seed; latents out) with, before the timing hooks go on, the row's peer installed on the
pipeline's transformer:

* ``fbc``: ``transformer.enable_cache(FirstBlockCacheConfig(threshold))`` (diffusers' CacheMixin). The pipelines
  wrap each transformer call in ``cache_context(name)`` and FirstBlockCache keeps one state per name, so a pipeline
  that runs guidance as two calls (WanPipeline: ``cond``, ``uncond``) gets one cache per branch; the names seen
  are recorded in the row's note. The state is reset before every pipeline call.
* ``dbcache``: ``cache_dit.enable_cache(pipe, DBCacheConfig(Fn, Bn, threshold, warm-up))`` on the pipeline:
  cache-dit resets its context at each pipeline call and, for pipelines it lists as running guidance in separate
  calls (Wan), keeps the second call of each step apart (``enable_separate_cfg``); the row's note says what it chose.
* ``none``: nothing (the uncached stock pipeline: with ``compiled``, the reference of the compiled peers).

``compiled``: ``torch.compile(transformer)`` (default options) after the peer is installed; the warm-up then runs
whole sampling runs until one compiles nothing new (FirstBlockCache's second run still compiles a graph), and
dynamo's counters (benchmarks/peers.py) give graph breaks and recompilations during the warm-up and the timed runs.
Eager rows count the blocks that really run with benchmarks/peers.py's CallCounter on leaf layers (a hook on a
block would fire even when the peer skips it) during the timed runs; compiled rows are not counted (the hooks
would be traced into the graphs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any

import torch
from torch import nn

from .bench_worker import StockRunner, log
from .peers import CallCounter, _last_linear, dynamo_counts, graph_break_reasons

MAX_COMPILE_WARMUPS = 3


class BlockCounter(CallCounter):
    """:class:`~ditcache.benchmarks.peers.CallCounter` for any chain of blocks: a call starts at the model's own
    forward (its head and tail always run, whatever a peer skips), each block is counted at its attention query
    and its last Linear."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module]):
        self.enabled = False
        self.calls: list[dict[str, Any]] = []
        self.blocks = len(blocks)
        self._handles = []
        self._watch(model, "head", None)  # hidden_states is the pipelines' first keyword argument
        for i, block in enumerate(blocks):
            query = next(m.to_q for m in block.modules() if isinstance(getattr(m, "to_q", None), nn.Linear))
            self._watch(query, "attn", i)
            self._watch(_last_linear(block), "mlp", i)


def count_numbers(calls: list[dict[str, Any]], runs: int, steps: int, spec, images: int) -> dict[str, Any]:
    """From the counted calls of ``runs`` sampling runs of ``steps`` steps: blocks run per run (block evaluations
    per sample of a step's model batch: a step that runs guidance as two calls counts each branch as half), MACs
    per image (graphs/macs.py per block) and the speedup they allow."""
    from ditcache.graphs import costs_for

    costs = costs_for(spec, 1)
    runs = max(1, runs)
    samples = sum(c["head"] for c in calls) / runs  # steps x model batch
    per_step = samples / steps
    macs = sum(c["head"] * (costs.head + costs.tail) + sum(n * b for n, b in zip(c["mlp"], costs.blocks))
               for c in calls) / runs
    full = samples * costs.full
    return {"gmacs_per_image": macs / images / 1e9, "mac_fraction": macs / full if full else None,
            "theoretical_speedup": full / macs if macs else None,
            "blocks_run": sum(sum(c["mlp"]) for c in calls) / runs / per_step if per_step else None,
            "blocks_full": steps * spec.num_blocks, "calls_per_run": len(calls) / runs,
            "samples_per_call": samples / (len(calls) / runs) if calls else None}


class PeerRunner(StockRunner):
    """The stock pipeline with the row's peer (benchmarks/bench_peers.py) on its transformer."""

    def prepare(self, model: nn.Module) -> nn.Module:
        peer = self.row.peer
        self.model, self.peer, self.compiled = model, peer, bool(peer["compiled"])
        self.contexts: list[str] = []
        self.counter: BlockCounter | None = None
        self.counted_runs = 0
        self.dynamo: dict[str, Any] = {}
        if self.prompts is not None and self.dtype != torch.float32:  # what a low-precision text encoder hands over
            self.prompts = dataclasses.replace(self.prompts, **{
                f.name: getattr(self.prompts, f.name).to(self.dtype) for f in dataclasses.fields(self.prompts)
                if isinstance(getattr(self.prompts, f.name), torch.Tensor) and f.name not in ("mask", "negative_mask")})
        getattr(self, f"_install_{peer['method']}")()
        called = model
        if self.compiled:
            torch._dynamo.reset()
            self.dynamo["before"] = dynamo_counts()
            called = torch.compile(model)
            self.pipe.transformer = called
            self.notes.append("torch.compile(transformer) with default options, after the peer (if any) was installed; "
                              "warmup_s includes the compilation")
        else:
            from ditcache.graphs import parts_for
            from ditcache.graphs.segments import block_modules

            self.counter = BlockCounter(model, block_modules(parts_for(model, self.spec)))
        return called

    # ---- the peers ----------------------------------------------------------------------------------------
    def _install_none(self) -> None:
        self.notes.append("no cache: the stock pipeline" + (" under torch.compile" if self.peer["compiled"] else ""))

    def _install_fbc(self) -> None:
        from diffusers.hooks import FirstBlockCacheConfig

        model = self.model
        model.enable_cache(FirstBlockCacheConfig(threshold=float(self.peer["threshold"])))
        original = model.cache_context

        def recording(name: str, **kwargs):  # the context names the pipeline gives its calls
            if name not in self.contexts:
                self.contexts.append(name)
            return original(name, **kwargs)

        model.cache_context = recording
        self._reset = model._reset_stateful_cache

    def _install_dbcache(self) -> None:
        import cache_dit
        from cache_dit import DBCacheConfig

        from .peers import CACHE_DIT_VERSION

        p = self.peer
        self.db_config = DBCacheConfig(Fn_compute_blocks=int(p["Fn"]), Bn_compute_blocks=int(p["Bn"]),
                                       residual_diff_threshold=float(p["threshold"]), max_warmup_steps=int(p["warmup"]),
                                       num_inference_steps=self.steps)
        with contextlib.redirect_stdout(io.StringIO()):
            cache_dit.enable_cache(self.pipe, cache_config=self.db_config)
        separate = bool(self.db_config.enable_separate_cfg)
        self.notes.append(
            f"cache-dit {CACHE_DIT_VERSION} enable_cache on the pipeline, DBCache F{p['Fn']}B{p['Bn']}, residual "
            f"threshold {p['threshold']:g} (relative L1 of the first blocks' residual), {p['warmup']} warm-up steps; "
            + ("enable_separate_cfg=True (cache-dit's choice for this pipeline): the second transformer call of each "
               "step (the unconditional branch) has its own cached residuals and its own decision" if separate else
               "enable_separate_cfg=False (cache-dit's choice for this pipeline): one decision per transformer call"))

    def _reset(self) -> None:
        """Clear the peer's state before a pipeline call (cache-dit resets itself at each call)."""

    # ---- runs -----------------------------------------------------------------------------------------------
    def _call(self, steps: int) -> torch.Tensor:
        self._reset()
        out = super()._call(steps)
        if self.counter is not None and self.counter.enabled and steps == self.steps:
            self.counted_runs += 1
        return out

    def warmup(self, mode: str) -> None:
        if not self.compiled:
            super().warmup(mode)
        else:
            counts = []
            for i in range(MAX_COMPILE_WARMUPS):
                self._call(self.steps)
                counts.append(dynamo_counts())
                log(f"compiled warm-up run {i + 1}: {counts[-1]}")
                if i and counts[-1] == counts[-2]:
                    break
            self.dynamo["warm"] = counts[-1]
            self.notes.append(f"warm-up: {len(counts)} whole sampling run(s), until one compiled nothing new "
                              f"(at most {MAX_COMPILE_WARMUPS})")
        if self.counter is not None:
            self.counter.enabled = True

    def measurements(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.counter is not None and self.counted_runs:
            self.counter.enabled = False
            out["counts"] = count_numbers(self.counter.calls, self.counted_runs, self.steps, self.spec,
                                          self.row.num_images)
            out["counts"]["source"] = f"leaf layers counted over the {self.counted_runs} timed run(s)"
            self.notes.append(f"blocks run and MACs: {out['counts']['source']} (forward pre-hooks on each block's "
                              f"attention query and last Linear: they run only when the block is computed)")
            self.counter.remove()
        if self.compiled and "warm" in self.dynamo:
            before, warm, after = self.dynamo["before"], self.dynamo["warm"], dynamo_counts()
            out.update(graph_breaks=warm["graph_breaks"] - before["graph_breaks"],
                       graphs=warm["unique_graphs"] - before["unique_graphs"],
                       recompiles=warm["recompiles"] - before["recompiles"],
                       steady_recompiles=after["recompiles"] - warm["recompiles"],
                       steady_graphs=after["unique_graphs"] - warm["unique_graphs"],
                       graph_break_reasons=graph_break_reasons())
        if self.peer["method"] == "fbc":
            self.notes.append(self._fbc_note())
        if self.peer["method"] == "dbcache":
            out["cache_dit_summary"] = self._cache_dit_summary()
        return out

    def _fbc_note(self) -> str:
        names = ", ".join(self.contexts) or "none recorded"
        note = (f"diffusers FirstBlockCache, threshold {self.peer['threshold']!r} (relative L1 change of the first "
                f"block's residual) via {type(self.model).__name__}.enable_cache; cache contexts the pipeline gave its "
                f"calls: {names}")
        if len(self.contexts) > 1:
            note += (" (one FirstBlockCache state per context: each guidance branch compares its own first-block "
                     "residual with its own previous step and skips or computes on its own)")
        return note

    def _cache_dit_summary(self) -> dict[str, Any]:
        import cache_dit

        try:
            stats = cache_dit.summary(self.model, logging=False)
        except Exception as exc:  # noqa: BLE001 - a summary is a note, not a measurement
            return {"error": f"{type(exc).__name__}: {exc}"}
        st = stats[0] if stats else None
        if st is None:
            return {}
        summary = {"cached_steps": sorted(int(s) for s in st.cached_steps or []),
                   "cfg_cached_steps": sorted(int(s) for s in st.cfg_cached_steps or [])}
        self.notes.append(f"cache-dit summary of the last run: cached steps {summary['cached_steps']}"
                          + (f", unconditional branch {summary['cfg_cached_steps']}"
                             if self.db_config.enable_separate_cfg else ""))
        return summary
