"""Any batch through static-shape graphs: split a request's model batch into chunks of the graphs' batch.

Compiled graphs have static shapes (the engine's model batch: images x 2 under guidance), which is what keeps
them fused and fast (one kernel plan per shape, CUDA graphs, TensorRT profiles of one shape). A request of
another size is run as consecutive chunks of that batch, the last one padded by repeating its last row; every
row of a DiT, PixArt or U-Net denoiser is computed independently of the others, so a row's result does not depend
on the chunk it was in (up to the batch-size dependence of the kernels themselves: GEMMs may block differently).

The wrapper is a pure VariantFn transform: the caches it is handed and returns cover the whole request (the
dispatcher keeps them as before); each chunk reads and records its own rows of them. Guidance, the scheduler
step and the noise are computed by the sampling loop on the whole batch, so neither depends on the chunking.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ditcache.compiler.runtime.dispatcher import VariantFn


def chunked(fn: VariantFn, batch: int) -> VariantFn:
    """``fn`` (a VariantFn of model batch ``batch``) for any model batch: the same call when the batch matches,
    else one call per chunk of ``batch`` rows (the last padded with copies of its last row), concatenated."""
    if batch < 1:
        raise ValueError(f"the graphs' batch must be >= 1 (got {batch})")

    def run(inputs: Mapping[str, torch.Tensor], caches: Mapping[str, torch.Tensor],
            corrections: Mapping[str, torch.Tensor]):
        rows = _rows(inputs)
        if rows == batch:
            return fn(inputs, caches, corrections)
        outs: list[torch.Tensor] = []
        recorded: dict[str, list[torch.Tensor]] = {}
        for start in range(0, rows, batch):
            index = torch.arange(start, start + batch).clamp_(max=rows - 1)  # (batch,): pad with the last row
            take = min(batch, rows - start)
            out, rec = fn(_select(inputs, index, rows), _select(caches, index, rows), corrections)
            outs.append(out[:take])
            for name, value in rec.items():
                recorded.setdefault(name, []).append(value[:take])
        return torch.cat(outs), {name: torch.cat(parts) for name, parts in recorded.items()}

    return run


def _rows(inputs: Mapping[str, torch.Tensor]) -> int:
    sizes = {v.shape[0] for v in inputs.values() if v.ndim > 0}
    if len(sizes) != 1:
        raise ValueError(f"model inputs disagree on the batch size: {sorted(sizes)} "
                         f"({', '.join(f'{k}: {list(v.shape)}' for k, v in inputs.items())})")
    return sizes.pop()


def _select(values: Mapping[str, torch.Tensor], index: torch.Tensor, rows: int) -> dict[str, torch.Tensor]:
    """The chunk's rows of every per-row tensor (first dimension ``rows``); anything else as it is."""
    out = {}
    for name, value in values.items():
        if value.ndim > 0 and value.shape[0] == rows:
            value = value.index_select(0, index.to(value.device))
        out[name] = value
    return out
