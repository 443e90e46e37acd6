"""The analytic MACs of graphs/macs.py against torch's FlopCounterMode on the real segments and plans.

FlopCounterMode counts matmuls, convolutions and attention; it counts no elementwise op, norm or
embedding lookup, which is what the analytic model leaves out too, so the two agree exactly.

One exception, in torch (checked with 2.13): on the CPU, ``F.scaled_dot_product_attention`` runs
``aten._scaled_dot_product_flash_attention_for_cpu``, which has no entry in torch's flop registry, so
FlopCounterMode silently counts attention as 0 there (the CUDA kernels, flash / efficient / cudnn,
are registered). The counter below registers torch's own sdpa formula for the CPU op, which makes
the comparison exact; ``test_cpu_sdpa_needs_the_extra_formula`` pins the gap, so this file notices
when torch registers the op itself.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.graphs import DiTParts, dit_costs, get_spec, parse_schedule
from ditcache.graphs.planning import plan_for
from ditcache.graphs.weights import build_model

BATCH = 3  # odd, so a per-sample factor of 2 somewhere would not hide

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # same formula torch uses for the CUDA kernels


def counter(with_cpu_sdpa: bool = True) -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={_CPU_SDPA: _cpu_sdpa_flop} if with_cpu_sdpa else None)


def counted_macs(fn, *args, with_cpu_sdpa: bool = True):
    """(MACs FlopCounterMode counts while running fn, fn's result)."""
    with torch.no_grad(), counter(with_cpu_sdpa) as flops:
        out = fn(*args)
    total = flops.get_total_flops()
    assert total % 2 == 0
    return total // 2, out


@pytest.fixture(scope="module", params=["dit-tiny", "dit-fmnist"])
def model_parts(request):
    spec = get_spec(request.param)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return spec, DiTParts(model, spec)


def test_segments_match_flop_counter(model_parts):
    spec, parts = model_parts
    costs = dit_costs(spec, BATCH)
    x = parts.example_inputs(BATCH, torch.Generator().manual_seed(0))
    t, y = x["timestep"], x["class_labels"]

    head, h = counted_macs(parts.head(), x["x"])
    assert head == costs.head
    assert h.shape == parts.hidden_shape(BATCH)

    for i in (0, spec.num_blocks - 1):
        block, h_next = counted_macs(parts.blocks(i, i + 1), h, t, y)
        assert block == costs.blocks[i], f"block {i}"
    several, _ = counted_macs(parts.blocks(0, 3), h, t, y)
    assert several == costs.blocks_range(0, 3)

    tail, out = counted_macs(parts.tail(), h_next, t, y)
    assert tail == costs.tail
    assert out.shape == (BATCH, spec.out_channels, spec.sample_size, spec.sample_size)

    full, _ = counted_macs(lambda: parts.model(x["x"], timestep=t, class_labels=y).sample)
    assert full == costs.full


def test_costs_scale_with_batch(model_parts):
    spec, _ = model_parts
    one, three = dit_costs(spec, 1), dit_costs(spec, 3)
    assert three.full == 3 * one.full and three.blocks == tuple(3 * b for b in one.blocks)


def test_cpu_sdpa_needs_the_extra_formula(tiny_spec, tiny_parts):
    """Without the CPU sdpa formula, FlopCounterMode misses exactly the attention matmuls (2·T²·D per
    sample per block). If this starts failing, torch counts the CPU kernel itself: drop the mapping."""
    x = tiny_parts.example_inputs(BATCH, torch.Generator().manual_seed(0))
    h = tiny_parts.head()(x["x"])
    seg = tiny_parts.blocks(0, 1)
    with_attn, _ = counted_macs(seg, h, x["timestep"], x["class_labels"])
    without, _ = counted_macs(seg, h, x["timestep"], x["class_labels"], with_cpu_sdpa=False)
    tokens, width = tiny_parts.tokens, tiny_spec.hidden_size
    assert with_attn - without == 2 * tokens * tokens * width * BATCH


SCHEDULES = {
    "delta-dit": {"kind": "delta-dit", "steps": 7, "boundary": 3, "interval": 3, "cached_blocks": 2},
    "delta-dit-overlapping": {"kind": "delta-dit", "steps": 6, "boundary": 2, "interval": 2, "cached_blocks": 3},
    "block-cache": {"kind": "block-cache", "steps": 6, "recompute": {0: [0, 3], 1: [0, 2, 4], 3: [0, 1, 5]}},
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_plan_step_macs_match_flop_counter(tiny_spec, tiny_parts, name):
    costs = dit_costs(tiny_spec, BATCH)
    plan = plan_for(parse_schedule(SCHEDULES[name]), tiny_spec)
    expected = plan.step_macs(costs)
    assert len(set(expected)) > 1, "a plan whose steps all cost the same would not test the replays"

    dispatcher = Dispatcher(plan, eager_variants(tiny_parts, plan))
    gen = torch.Generator().manual_seed(1)
    measured = []
    for _ in range(plan.num_steps):
        macs, out = counted_macs(dispatcher, tiny_parts.example_inputs(BATCH, gen))
        assert out.shape == (BATCH, tiny_spec.out_channels, tiny_spec.sample_size, tiny_spec.sample_size)
        measured.append(macs)
    assert measured == expected
    assert plan.total_macs(costs) == sum(measured)
    assert plan.theoretical_speedup(costs) == pytest.approx(costs.full * plan.num_steps / sum(measured))
