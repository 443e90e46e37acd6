"""Adaptive schedules at run time: the eager dispatcher against an independent reference loop over the diffusers model
(tests/adaptive_reference.py), the decision record, the batch rule, and threshold 0 = the full run."""

from __future__ import annotations

import pytest
import torch
from adaptive_reference import AdaptiveReference

from ditcache.compiler.runtime.decider import Decider, chunked_program, eager_adaptive_dispatcher, module_program
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.graphs import parts_for
from ditcache.graphs.adaptive import AdaptivePlan, AdaptivePolicy
from ditcache.graphs.adaptive_programs import program_modules

STEPS = 10


def dit_request():
    return SampleRequest((1, 2), STEPS, 4.0, 3, "ddim")


def adaptive_plan(spec, **policy) -> AdaptivePlan:
    return AdaptivePlan.build(AdaptivePolicy(steps=STEPS, **policy), spec.num_blocks)


def run_both(model, spec, request, **policy):
    """(ditcache's latents, its decisions, the reference's latents, its decisions)."""
    plan = adaptive_plan(spec, **policy)
    dispatcher = eager_adaptive_dispatcher(parts_for(model, spec), plan)
    ours = sample(dispatcher, spec, request)
    start, end = plan.replay_range.start, plan.replay_range.end
    p = plan.policy
    reference = AdaptiveReference(model, steps=STEPS, threshold=p.threshold, signal=p.signal, start=start, end=end,
                                  warmup=p.warmup, final=p.final, cap=p.max_consecutive, rescale=p.rescale)
    theirs = sample(reference, spec, request)
    return ours, [d.program for d in dispatcher.decisions], theirs, reference.programs, dispatcher


@pytest.mark.parametrize("policy", [
    dict(signal="first-block", threshold=0.3),
    dict(signal="modulated-input", threshold=0.3),
    dict(signal="first-block", threshold=0.5, replay=(1, 3), warmup=1, final=0, max_consecutive=2),
    dict(signal="modulated-input", threshold=0.25, rescale=(2.0, 0.5, 0.0)),
], ids=["first-block", "modulated-input", "range-1-3-cap2", "rescaled"])
def test_dit_adaptive_matches_the_reference_loop(tiny_model, tiny_spec, policy):
    ours, decided, theirs, expected, dispatcher = run_both(tiny_model, tiny_spec, dit_request(), **policy)
    assert decided == expected
    assert "replay" in decided  # the run really replays some steps
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    full = sample(model_denoiser(tiny_model), tiny_spec, dit_request())
    assert (ours - full).abs().max() > 1e-3
    record = dispatcher.decisions
    assert [d.step for d in record] == list(range(STEPS))
    assert all(d.fixed and d.signal is None for d in record if d.step < dispatcher.plan.policy.warmup)
    runs = "".join("r" if d == "replay" else "c" for d in decided)
    assert "r" * (dispatcher.plan.policy.max_consecutive + 1) not in runs


def test_pixart_adaptive_matches_the_reference_loop(pixart_model, pixart_spec, pixart_prompts):
    request = SampleRequest(steps=STEPS, guidance_scale=4.5, seed=5, scheduler="dpm++", prompts=pixart_prompts)
    ours, decided, theirs, expected, _ = run_both(pixart_model, pixart_spec, request, signal="first-block",
                                                  threshold=0.4)
    assert decided == expected and "replay" in decided
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    ours_mod, decided_mod, theirs_mod, expected_mod, _ = run_both(pixart_model, pixart_spec, request,
                                                                  signal="modulated-input", threshold=0.2)
    assert decided_mod == expected_mod and "replay" in decided_mod
    torch.testing.assert_close(ours_mod, theirs_mod, rtol=1e-4, atol=1e-5)


def test_threshold_zero_is_the_full_run(tiny_model, tiny_spec):
    plan = adaptive_plan(tiny_spec, threshold=0.0)
    dispatcher = eager_adaptive_dispatcher(parts_for(tiny_model, tiny_spec), plan)
    ours = sample(dispatcher, tiny_spec, dit_request())
    assert all(d.program == "compute" for d in dispatcher.decisions)
    torch.testing.assert_close(ours, sample(model_denoiser(tiny_model), tiny_spec, dit_request()))


def test_batch_rule_is_the_largest_row():
    decider = Decider(AdaptivePolicy(steps=6, threshold=0.5, warmup=1, final=0, max_consecutive=5))
    decider.fixed(0)
    assert decider.decide(1, torch.tensor([0.1, 0.3]))  # every row under 0.5
    assert not decider.decide(2, torch.tensor([0.1, 0.25]))  # row 1 accumulates 0.55
    assert decider.decisions[2].reason == "over budget" and decider.decisions[2].accumulated == pytest.approx(0.55)
    assert decider.decide(3, torch.tensor([0.4, 0.0]))  # the budget started again at the compute
    assert decider.decisions[3].accumulated == pytest.approx(0.4)


def test_a_decision_is_per_batch_the_largest_row_decides(tiny_model, tiny_spec):
    """The batch's signal at the first decided step is the largest row's: the max over the images run alone (every
    earlier step computed, so each row's trajectory is its own)."""
    plan = adaptive_plan(tiny_spec, threshold=0.3)
    parts = parts_for(tiny_model, tiny_spec)
    first = plan.decided_steps[0]
    alone = []
    for label, seed in ((1, 3), (2, 4), (3, 5)):
        dispatcher = eager_adaptive_dispatcher(parts, plan)
        sample(dispatcher, tiny_spec, SampleRequest((label,), STEPS, 4.0, 0, "ddim", sample_seeds=(seed,)))
        alone.append(dispatcher.decisions[first].signal)
    together = eager_adaptive_dispatcher(parts, plan)
    sample(together, tiny_spec, SampleRequest((1, 2, 3), STEPS, 4.0, 0, "ddim", sample_seeds=(3, 4, 5)))
    assert together.decisions[first].signal == pytest.approx(max(alone), rel=1e-4)
    assert len(set(round(a, 4) for a in alone)) == 3  # the rows really differ


def test_chunked_programs_equal_one_call(tiny_model, tiny_spec):
    plan = adaptive_plan(tiny_spec, threshold=0.3)
    modules = program_modules(parts_for(tiny_model, tiny_spec), plan)
    probe = module_program(modules["probe"])
    inputs = parts_for(tiny_model, tiny_spec).example_inputs(5, torch.Generator().manual_seed(0))
    inputs["probe_ref"] = torch.randn(5, 16, 32)
    whole = probe(inputs)
    pieces = chunked_program(probe, 2, "x")(inputs)
    assert pieces["signal"].shape == (5,)
    for name in whole:
        torch.testing.assert_close(pieces[name], whole[name])


def test_unet_is_refused():
    from ditcache.graphs import get_spec
    from ditcache.graphs.adaptive import check_family
    from ditcache.graphs.schedule import ScheduleError

    with pytest.raises(ScheduleError, match="U-Net"):
        check_family(get_spec("unet-tiny"), AdaptivePolicy(steps=4, threshold=0.1), "s.yaml")
