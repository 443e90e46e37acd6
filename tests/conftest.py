"""Shared tiny models (built once per session) and helpers."""

from __future__ import annotations

import pytest
from ditcache.graphs import DiTParts, get_spec
from ditcache.graphs.weights import load_model


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
