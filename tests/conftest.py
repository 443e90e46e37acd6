"""Shared tiny models (built once per session) and helpers."""

from __future__ import annotations

import pytest
import torch
from ditcache.graphs import DiTParts, get_spec
from ditcache.graphs.weights import load_model


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
    threads make every op ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_spec():
    return get_spec("dit-tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    model, _ = load_model(tiny_spec, random_weights=True, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_parts(tiny_model, tiny_spec):
    return DiTParts(tiny_model, tiny_spec)
