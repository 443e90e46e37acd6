"""The per-sample seed rule: sample ``index`` of a run with global ``seed`` gets its own noise seed.

One rule for every consumer (``ditcache generate``, benchmarks/eval_quality.py and the benchmarks built on it), so
a sample's noise depends on (seed, index) only: not on the batch, the rank that computes it or the schedule.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

SEED_RULE = "SeedSequence([seed, index]).generate_state(1)[0]"  # recorded beside results (generate's run.json)


def sample_seed(seed: int, index: int) -> int:
    """The noise seed (32 bits) of sample ``index`` under the non-negative global ``seed``: numpy's SeedSequence
    of the pair, its first state word, for ``torch.Generator().manual_seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sample_seeds(seed: int, indices: Iterable[int]) -> tuple[int, ...]:
    """:func:`sample_seed` of each of ``indices`` (``SampleRequest.sample_seeds``)."""
    return tuple(sample_seed(seed, i) for i in indices)
