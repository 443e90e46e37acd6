"""head / blocks[i:j] / tail chained equals the diffusers forward."""

from __future__ import annotations

import pytest
import torch

from ditcache.graphs import DiTParts, get_spec
from ditcache.graphs.registry import MODELS
from ditcache.graphs.weights import load_model


def chained(parts: DiTParts, inputs, cuts):
    cond = (inputs["timestep"], inputs["class_labels"])
    h = parts.head()(inputs["x"])
    for a, b in zip(cuts[:-1], cuts[1:]):
        h = parts.blocks(a, b)(h, *cond)
    return parts.tail()(h, *cond)


def check(name: str, batch: int, cut_sets):
    spec = get_spec(name)
    model, _ = load_model(spec, random_weights=True, seed=1)
    parts = DiTParts(model, spec)
    inputs = parts.example_inputs(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(inputs["x"], timestep=inputs["timestep"], class_labels=inputs["class_labels"]).sample
        for cuts in cut_sets:
            torch.testing.assert_close(chained(parts, inputs, cuts), want, rtol=0, atol=0)
    assert want.shape == (batch, spec.out_channels, spec.sample_size, spec.sample_size)


def test_tiny():
    check("dit-tiny", 3, [(0, 4), (0, 1, 2, 3, 4), (0, 3, 4)])


def test_fmnist_size():
    check("dit-fmnist", 2, [(0, 12), (0, 4, 8, 12)])


def test_bad_range(tiny_parts):
    with pytest.raises(ValueError, match="outside"):
        tiny_parts.blocks(2, 9)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.family == "dit" and n not in ("dit-tiny", "dit-fmnist")])
def test_full_sizes(name):
    """The DiT sizes (PixArt and the U-Nets have their own full-size checks in test_pixart.py / test_unet.py)."""
    nb = get_spec(name).num_blocks
    check(name, 1, [(0, nb), (0, nb // 4, nb - nb // 4, nb)])
