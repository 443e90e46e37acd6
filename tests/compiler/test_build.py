"""The one dispatcher builder: eager and compiled callables at both granularities run the same plan the same way,
and a corrected plan's scale/shift file is loaded (and checked) in one place."""

from __future__ import annotations

import pytest
import torch

from ditcache.compiler.backend import BuildSettings, get_backend
from ditcache.compiler.graph_specs import plan_graphs
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.sampling import model_denoiser
from ditcache.graphs import parse_schedule
from ditcache.graphs.corrections import CorrectionsError
from ditcache.graphs.planning import plan_for

BATCH = 2
BLOCK = {"kind": "block-cache", "steps": 4, "recompute": {1: [0, 2], 2: [0, 3]}}


def step_inputs(parts, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [parts.example_inputs(BATCH, gen) for _ in range(steps)]


def run(dispatcher, inputs):
    dispatcher.reset()
    return [dispatcher(x) for x in inputs]


def scale_shift(tmp_path, plan, value=1.5):
    from safetensors.torch import save_file

    d = 32  # dit-tiny's hidden size
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for r in plan.ranges:
        tensors[f"scale.{r.name}"] = value + 0.1 * torch.randn(plan.num_steps, d, generator=gen)
        tensors[f"shift.{r.name}"] = 0.1 * torch.randn(plan.num_steps, d, generator=gen)
    save_file(tensors, str(tmp_path / "ss.safetensors"))
    return tensors


@pytest.mark.parametrize("granularity", ["variant", "segment"])
def test_compiled_callables_run_the_plan_as_eager_does(tiny_parts, tiny_spec, tiny_model, granularity):
    plan = plan_for(parse_schedule(BLOCK), tiny_spec)
    inputs = step_inputs(tiny_parts, plan.num_steps)
    eager = run(build_dispatcher(plan, parts=tiny_parts), inputs)
    graphs = {g.name: g for g in plan_graphs(tiny_parts, plan, granularity, BATCH, torch.float32)}
    backend, settings = get_backend("eager"), BuildSettings("fp32", "cpu")
    flats = {n: backend.load(g, settings, []) for n, g in graphs.items()}
    compiled = run(build_dispatcher(plan, parts=tiny_parts, flats=flats, graphs=graphs, granularity=granularity),
                   inputs)
    full = model_denoiser(tiny_model)
    with torch.no_grad():
        uncached = [full(x) for x in inputs]
    for s in range(plan.num_steps):
        torch.testing.assert_close(compiled[s], eager[s], msg=f"step {s}")
    assert (eager[1] - uncached[1]).abs().max() > 1e-4, "step 1 replays: the cache must change it"


def test_corrections_come_from_the_plans_file(tmp_path, tiny_parts, tiny_spec):
    plain = plan_for(parse_schedule(BLOCK), tiny_spec)
    tensors = scale_shift(tmp_path, plain)
    plan = plan_for(parse_schedule({**BLOCK, "scale_shift": "ss.safetensors"}, base_dir=tmp_path), tiny_spec)
    assert plan.corrected and plan.corrections == tmp_path / "ss.safetensors"
    inputs = step_inputs(tiny_parts, plan.num_steps, seed=2)
    from_file = run(build_dispatcher(plan, parts=tiny_parts), inputs)
    given = run(build_dispatcher(plan, parts=tiny_parts, corrections=tensors), inputs)
    uncorrected = run(build_dispatcher(plain, parts=tiny_parts), inputs)
    for s in range(plan.num_steps):
        torch.testing.assert_close(from_file[s], given[s], rtol=0, atol=0)
    assert (from_file[1] - uncorrected[1]).abs().max() > 1e-4, "the scale/shift must change replayed steps"
    torch.testing.assert_close(from_file[0], uncorrected[0], rtol=0, atol=0)  # step 0 replays nothing


def test_bad_corrections_and_missing_callables_are_refused(tmp_path, tiny_parts, tiny_spec):
    import dataclasses

    plan = plan_for(parse_schedule(BLOCK), tiny_spec)
    with pytest.raises(ValueError, match="names no corrections file"):
        build_dispatcher(dataclasses.replace(plan, corrected=True), parts=tiny_parts)
    short = plan_for(parse_schedule({**BLOCK, "steps": 3, "recompute": {1: [0, 2], 2: [0]}}), tiny_spec)
    scale_shift(tmp_path, short)  # 3 steps: does not fit a 4-step plan
    with pytest.raises(CorrectionsError, match=r"has shape \(3, 32\), this plan needs \(4, 32\)"):
        build_dispatcher(dataclasses.replace(plan, corrected=True), parts=tiny_parts,
                         corrections=tmp_path / "ss.safetensors")
    with pytest.raises(CorrectionsError, match=r"has shape \(3, 32\), this plan needs \(4, 32\)"):
        build_dispatcher(dataclasses.replace(plan, corrected=True), flats={}, graphs={}, granularity="segment",
                         segments={}, corrections=tmp_path / "ss.safetensors")  # no model: the step count still
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CorrectionsError, match="not a safetensors file"):
        build_dispatcher(dataclasses.replace(plan, corrected=True), parts=tiny_parts,
                         corrections=tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="needs the model's parts"):
        build_dispatcher(plan)
    with pytest.raises(ValueError, match="granularity must be one of"):
        build_dispatcher(plan, parts=tiny_parts, flats={}, graphs={}, granularity="layer")
    with pytest.raises(ValueError, match="need eager variants"):
        build_dispatcher(plan, parts=tiny_parts, flats={}, graphs={}, trainable=True)


def test_trainable_dispatcher_passes_gradients_to_the_corrections(tiny_parts, tiny_spec):
    import dataclasses

    plan = dataclasses.replace(plan_for(parse_schedule(BLOCK), tiny_spec), corrected=True)
    params = {}
    for r in plan.ranges:
        params[f"scale.{r.name}"] = torch.ones(plan.num_steps, 32, requires_grad=True)
        params[f"shift.{r.name}"] = torch.zeros(plan.num_steps, 32, requires_grad=True)
    dispatcher = build_dispatcher(plan, parts=tiny_parts, corrections=params, trainable=True)
    inputs = step_inputs(tiny_parts, plan.num_steps, seed=3)
    dispatcher.reset()
    first = dispatcher(inputs[0])
    assert first.requires_grad  # autograd is on (the model's weights require grad)
    assert set(dispatcher.caches) == {"b1", "b2"}
    assert not any(c.requires_grad for c in dispatcher.caches.values())  # recorded caches are cut from the graph
    dispatcher(inputs[1]).sum().backward()  # step 1 replays b1 and b2
    assert params["shift.b1"].grad[1].abs().sum() > 0
    assert params["shift.b1"].grad[0].abs().sum() == 0  # step 0 replays nothing


def test_fresh_dispatcher_shares_the_variants_not_the_caches(tiny_parts, tiny_spec):
    plan = plan_for(parse_schedule(BLOCK), tiny_spec)
    inputs = step_inputs(tiny_parts, plan.num_steps, seed=4)
    first = build_dispatcher(plan, parts=tiny_parts)
    want = run(first, inputs)
    first.reset()
    first(inputs[0])  # mid-run: holds caches
    other = first.fresh()
    assert other.variants == first.variants and other.step == 0 and other.caches == {}
    got = [other(x) for x in inputs]
    assert first.step == 1 and set(first.caches) == {"b1", "b2"}  # untouched by the other's run
    for s in range(plan.num_steps):
        torch.testing.assert_close(got[s], want[s], rtol=0, atol=0)
