"""How ``generate`` cuts N samples into chunks aligned on the global index, and which rank computes which.

Sample i's class is :func:`class_for`; its noise seed is ``ditcache.compiler.runtime.seeds.sample_seed(seed, i)``.
"""

from __future__ import annotations

from typing import Sequence


def class_for(index: int, classes: Sequence[int]) -> int:
    """Class of sample ``index``: the class list, cycled."""
    return int(classes[index % len(classes)])


def num_chunks(num_samples: int, chunk_size: int) -> int:
    """Chunks of ``chunk_size`` covering ``num_samples`` (the last one may be shorter)."""
    return -(-num_samples // chunk_size)


def chunk_range(chunk: int, chunk_size: int, num_samples: int) -> range:
    """Global indices of ``chunk``: ``[c*B, min((c+1)*B, N))``."""
    return range(chunk * chunk_size, min((chunk + 1) * chunk_size, num_samples))


def assign(chunks: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of ``chunks``: whole chunks, round-robin."""
    return list(chunks[rank::world])
