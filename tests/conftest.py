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


@pytest.fixture(scope="session")
def pixart_spec():
    return get_spec("pixart-tiny")


@pytest.fixture(scope="session")
def pixart_model(pixart_spec):
    model, _ = load_model(pixart_spec, random_weights=True, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def pixart_prompts():
    """Prompt embeddings for pixart-tiny (2 images, 8 tokens of 32 channels), padded masks, one shared negative."""
    from ditcache.compiler.runtime.prompts import PromptEmbeddings

    gen = torch.Generator().manual_seed(3)
    return PromptEmbeddings(torch.randn(2, 8, 32, generator=gen), torch.tensor([[1] * 5 + [0] * 3, [1] * 8]),
                            torch.randn(1, 8, 32, generator=gen), torch.tensor([[1] * 2 + [0] * 6]))
