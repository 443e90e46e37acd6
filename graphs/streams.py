"""Token streams of a joined hidden state, and block caching's per-stream scale/shift over them.

FLUX.1 and SD3 carry two token streams as one hidden state ``h = [text; image]`` (B, L + T, D). Their scale/shift
table has one row per stream, (2, D): row 0 for the text tokens, row 1 for the image tokens. Inside a graph the
table is expanded to the token layout (L + T, D) with static slices (a constant stream per token: no indexing by
data, no branching), and then broadcast against ``h`` like a per-channel (D,) table. Families with one stream
(DiT, PixArt, Wan, the U-Nets) declare no streams and keep their per-channel shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .segments import channel_shape_at


@dataclass(frozen=True)
class Streams:
    """The token streams joined along a hidden state's token axis, in order.

    Args:
        names: one per stream (``text``, ``image``), the rows of a per-stream scale/shift table.
        tokens: each stream's token count (static: the expansion does no shape arithmetic at run time).
    """

    names: tuple[str, ...]
    tokens: tuple[int, ...]

    def __post_init__(self):
        if len(self.names) != len(self.tokens) or not self.names:
            raise ValueError(f"streams need one token count per name, got {self.names} and {self.tokens}")

    @property
    def rows(self) -> int:
        return len(self.names)

    def expand(self, table: torch.Tensor) -> torch.Tensor:
        """(S, *C) per-stream rows -> (sum(tokens), *C): each token gets its stream's row."""
        if table.ndim < 1 or table.shape[0] != self.rows:
            raise ValueError(f"a per-stream scale/shift has {self.rows} rows ({', '.join(self.names)}), got a table of "
                             f"shape {tuple(table.shape)}")
        rest = tuple(table.shape[1:])
        parts = [table[i:i + 1].expand(n, *rest) for i, n in enumerate(self.tokens)]  # (n_i, *C) each
        return torch.cat(parts, dim=0)  # (L + T, *C)

    def split(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, ...]:
        """``x`` cut along its token axis ``dim`` into the streams' tokens."""
        return torch.split(x, list(self.tokens), dim=dim)

    def to_dict(self) -> dict[str, list]:
        return {"names": list(self.names), "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> "Streams":
        return cls(tuple(data["names"]), tuple(int(n) for n in data["tokens"]))


class TextImageStreams:
    """Mixin of the parts whose hidden state is [text; image] (FLUX.1, SD3): they set ``text_length`` and count
    their ``image_tokens``."""

    text_length: int
    image_tokens: int

    def streams(self) -> Streams:
        """h's two streams: a scale/shift table has a text row and an image row, (2, D)."""
        return Streams(("text", "image"), (int(self.text_length), int(self.image_tokens)))


def streams_of(parts) -> Streams | None:
    """The streams a family's hidden state joins (its optional ``streams()`` hook), None for one stream."""
    hook = getattr(parts, "streams", None)
    return hook() if hook is not None else None


def correction_shape_at(parts, block: int) -> tuple[int, ...]:
    """Shape of block ``block``'s scale/shift table at one step: the per-channel shape (D,) / (C, 1, 1), with a
    leading row per stream where the hidden state joins several, (2, D)."""
    channels = channel_shape_at(parts, block)
    streams = streams_of(parts)
    return channels if streams is None else (streams.rows, *channels)


def expand_correction(table: torch.Tensor, streams: Streams | None) -> torch.Tensor:
    """A scale/shift table as it broadcasts against the hidden state: per-stream rows expanded to the tokens, a
    per-channel table unchanged."""
    return table if streams is None else streams.expand(table)
