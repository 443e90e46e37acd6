"""graphs/macs.py's U-Net cost model against torch's FlopCounterMode on the real segments, links and plans."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.runtime.dispatcher import Dispatcher
from ditcache.compiler.runtime.interpreter import eager_variants
from ditcache.graphs import UNetParts, get_spec, parse_schedule, unet_costs
from ditcache.graphs.planning import plan_for
from ditcache.graphs.plan import CacheRange, Plan
from ditcache.graphs.registry import at_resolution
from ditcache.graphs.weights import build_model

from test_macs import counted_macs  # FlopCounterMode with torch's sdpa formula for the CPU kernel

BATCH = 3


@pytest.fixture(scope="module", params=["unet-tiny", "unet-fmnist"])
def unet(request):
    spec = get_spec(request.param)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    return spec, model, UNetParts(model, spec)


def run(segment, env):
    macs, out = counted_macs(segment, *(env[n] for n in segment.inputs))
    env.update(zip(segment.outputs, out if isinstance(out, tuple) else (out,)))
    return macs


def test_every_segment_matches_the_flop_counter(unet):
    spec, model, parts = unet
    costs = unet_costs(spec, BATCH)
    env = parts.example_inputs(BATCH, torch.Generator().manual_seed(0))
    inputs = dict(env)
    assert run(parts.head(), env) == costs.head
    for i in range(parts.num_blocks):
        if i > 0:
            assert run(parts.link(i), env) == costs.links[i], f"link {i}"
        assert run(parts.blocks(i, i + 1), env) == costs.blocks[i], f"block {i}"
    assert run(parts.tail(), env) == costs.tail
    full, _ = counted_macs(lambda: model(inputs["x"], inputs["timestep"], inputs.get("encoder_hidden_states"),
                                         class_labels=inputs.get("class_labels")).sample)
    assert full == costs.full
    nb = parts.num_blocks  # a range saves its blocks and the links inside it, not the one before it
    assert costs.blocks_range(nb - 2, nb) == costs.blocks[nb - 2] + costs.links[nb - 1] + costs.blocks[nb - 1]


def test_sd15_costs():
    spec = get_spec("sd15-unet")
    costs = unet_costs(spec)
    assert len(costs.blocks) == 16 and len(costs.links) == 16
    assert 380e9 < costs.full < 420e9  # SD 1.5 U-Net at 512 px with 77 text tokens: ~0.4 TMACs per call
    assert costs.blocks[0] == costs.blocks[-1]  # 64x64, 320 channels: first down and last up layer alike
    small = unet_costs(at_resolution(spec, 256))
    assert small.full < costs.full / 4  # convolutions scale with the pixels, self-attention with their square


PLANS = {
    "block-cache": lambda: plan_for(parse_schedule({"kind": "block-cache", "steps": 5,
                                                    "recompute": {0: [0, 3], 1: [0, 2], 3: [0, 1]}}),
                                    get_spec("unet-tiny")),
    "up-level-range": lambda: Plan.from_replays(4, [CacheRange("back", 2, 4)], [set(), {"back"}, set(), {"back"}]),
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan_step_macs_match_the_flop_counter(name):
    spec = get_spec("unet-tiny")
    torch.manual_seed(0)
    parts = UNetParts(build_model(spec).eval(), spec)
    costs = unet_costs(spec, BATCH)
    plan = PLANS[name]()
    expected = plan.step_macs(costs)
    assert len(set(expected)) > 1
    dispatcher = Dispatcher(plan, eager_variants(parts, plan))
    gen = torch.Generator().manual_seed(1)
    measured = [counted_macs(dispatcher, parts.example_inputs(BATCH, gen))[0] for _ in range(plan.num_steps)]
    assert measured == expected
