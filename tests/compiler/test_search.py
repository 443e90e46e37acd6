"""Error-driven static schedules (graphs.auto_schedule's search, compiler.calibration.search's measured objective,
``auto-schedule --objective error``) on dit-tiny with random weights and a fixed seed."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from ditcache.cli.main import main
from ditcache.compiler.calibration.curves import calibrate
from ditcache.compiler.calibration.search import StepErrorModel, calibration_batch, compare_final, final_error
from ditcache.compiler.runtime.build import build_dispatcher
from ditcache.compiler.runtime.sampling import model_denoiser, sample
from ditcache.graphs import costs_for, load_schedule, parts_for
from ditcache.graphs.auto_schedule import (MacBudget, SearchSpace, block_units, check_reachable, plan_for_threshold,
                                           prefix_meeting, search_schedule, threshold_for_target)
from ditcache.graphs.configs import BlockCacheConfig
from ditcache.graphs.macs import SegmentCosts
from ditcache.graphs.planning import plan_for
from ditcache.graphs.registry import get_spec
from ditcache.graphs.weights import load_model

STEPS = 5


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, None, True)
    model.eval()
    parts = parts_for(model, spec)
    request = calibration_batch([0, 1], None, spec.num_classes, STEPS, 4.0, "ddim")
    space = SearchSpace(spec.num_blocks, STEPS, block_units(spec.num_blocks))
    return spec, model, parts, request, space, StepErrorModel(parts, spec, space, request)


def moves_of(plan) -> frozenset:
    """The single-block moves of a block-cache plan."""
    return frozenset((s, int(n[1:])) for s, v in enumerate(plan.steps) for n in v.replay)


@pytest.mark.parametrize("budget", [MacBudget.of(1.3), MacBudget.of(1.7), MacBudget.of(mac_fraction=0.7)])
def test_search_meets_the_budget_as_the_plan_counts_it(tiny, budget):
    spec, _, _, _, space, objective = tiny
    costs = costs_for(spec)
    result = search_schedule(space, costs, budget, objective)
    plan = plan_for(BlockCacheConfig(steps=STEPS, recompute=space.recompute(result.moves)).to_schedule(), spec)
    assert plan.total_macs(costs) == space.total_macs(result.moves, costs)
    assert plan.theoretical_speedup(costs) >= budget.target_speedup
    assert result.speedup == plan.theoretical_speedup(costs)
    assert not budget.met(space.total_macs(result.order[:-1], costs), costs, STEPS)  # stops at the first that meets it
    assert frozenset(result.order) == result.moves
    assert prefix_meeting(space, costs, result.order, budget) == result.moves


def test_every_prefix_of_the_search_path_is_a_feasible_plan(tiny):
    spec, _, _, _, space, objective = tiny
    costs = costs_for(spec)
    result = search_schedule(space, costs, MacBudget.of(2.0), objective)
    for n in range(len(result.order) + 1):
        moves = result.order[:n]
        table = space.recompute(moves)
        plan = plan_for(BlockCacheConfig(steps=STEPS, recompute=table).to_schedule(), spec)
        assert moves_of(plan) == frozenset(moves)
        for s, variant in enumerate(plan.steps):  # a replayed block was computed at an earlier step
            for name in variant.replay:
                assert any(p < s for p in table[int(name[1:])])


def test_units_of_several_blocks_plan_as_block_tables(tiny):
    spec = tiny[0]
    costs = costs_for(spec)
    space = SearchSpace(spec.num_blocks, STEPS, block_units(spec.num_blocks, 3))
    assert [(u.start, u.end) for u in space.units] == [(0, 3), (3, 4)]
    moves = {(1, 0), (2, 0), (3, 1)}
    grouped = space.plan(moves)
    per_block = plan_for(BlockCacheConfig(steps=STEPS, recompute=space.recompute(moves)).to_schedule(), spec)
    assert [per_block.blocks_computed(s) for s in range(STEPS)] == [grouped.blocks_computed(s) for s in range(STEPS)]
    assert per_block.total_macs(costs) == grouped.total_macs(costs) == space.total_macs(moves, costs)


def test_step_error_is_the_dispatchers_error_at_that_step(tiny):
    """The objective's teacher-forced step run against the runtime: a plan replaying one block at step 2 only
    makes the same step-2 output as the search measured (steps before it are full, so the state is the full run's)."""
    spec, model, parts, request, space, objective = tiny
    reference = []
    sample(lambda inputs: reference.append(model_denoiser(model)(inputs)) or reference[-1], spec, request)
    for ours, theirs in zip(objective.reference.outputs, reference):  # the search's full run is the model's
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    plan = space.plan({(2, 1)})
    dispatcher = build_dispatcher(plan, parts=parts)
    outputs = []

    def recording(inputs):
        outputs.append(dispatcher(inputs))
        return outputs[-1]

    dispatcher.reset()
    sample(recording, spec, request)
    c = spec.in_channels  # learned-sigma channels are not sampled from: the objective leaves them out
    mse = (outputs[2][:, :c] - objective.reference.outputs[2][:, :c]).pow(2).mean().item()
    assert mse > 0  # the replay really changes the output
    assert objective.step_error(2, (("b1", 1),)) == pytest.approx(mse, rel=1e-4)
    assert all(g > 0 for g in objective.gains)


def test_step_runs_from_the_first_replay_equal_runs_from_the_head(tiny):
    """On a chain of blocks a step run starts at its first replayed unit; what it computes is the same, bit for bit."""
    objective = tiny[-1]
    assert objective.chained
    for step, names in ((1, ("b0",)), (2, ("b1",)), (3, ("b1", "b3")), (4, ("b3",))):
        caches = {n: objective.reference.records[step - 1][n] for n in names}
        with torch.no_grad():
            fast = objective._step_output(step, caches)
            slow = objective._fn(names)(objective.reference.inputs[step], caches, {})[0]
        assert torch.equal(fast, slow)
        assert not torch.equal(fast, objective.reference.outputs[step])


def test_search_beats_the_change_curve_rule_at_equal_budget(tiny):
    spec, model, parts, request, space, objective = tiny
    costs = costs_for(spec)
    curves = calibrate(model, spec, [request])
    for target in (1.3, 1.7):
        budget = MacBudget.of(target)
        curve_plan = plan_for_threshold(curves.mean, threshold_for_target(curves.mean, target, costs))
        assert curve_plan.theoretical_speedup(costs) >= target
        result = search_schedule(space, costs, budget, objective)
        assert result.error <= objective(moves_of(curve_plan))
        ours = final_error(parts, spec, space.plan(result.moves), request, objective.reference.final)
        theirs = final_error(parts, spec, curve_plan, request, objective.reference.final)
        assert ours.mse <= theirs.mse
        assert ours.mse > 0  # cached: not the full run


def test_beam_search_finds_the_exhaustive_optimum_on_a_toy(tiny):
    """3 steps, 2 units (of 2 blocks): beam search as wide as the space is exhaustive; greedy is never better."""
    spec, _, parts, _, _, _ = tiny
    costs = costs_for(spec)
    request = calibration_batch([3], None, spec.num_classes, 3, 4.0, "ddim")
    space = SearchSpace(spec.num_blocks, 3, block_units(spec.num_blocks, 2))
    objective = StepErrorModel(parts, spec, space, request)
    two = costs.full * 3 / space.total_macs(list(space.moves)[:2], costs)
    budget = MacBudget(two, "two moves")
    best = min(objective(frozenset(c)) for c in itertools.combinations(space.moves, 2))
    wide = search_schedule(space, costs, budget, objective, beam_width=6)
    assert len(wide.moves) == 2 and wide.error == pytest.approx(best)
    greedy = search_schedule(space, costs, budget, objective)
    assert greedy.error >= best - 1e-15


def _synthetic(space: SearchSpace):
    """A supermodular objective: per-move costs, plus a penalty for each replay that follows a replay of the same
    unit (its cache gets older)."""
    weights = {m: 1.0 + ((7 * m[0] + 3 * m[1]) % 5) / 4 for m in space.moves}

    def objective(moves):
        return sum(weights[m] for m in moves) + sum(2.0 for s, u in moves if (s - 1, u) in moves)

    return objective


def test_lazy_greedy_is_greedy_and_wide_beam_is_exhaustive_on_a_synthetic_objective():
    space = SearchSpace(3, 4, block_units(3))
    costs = SegmentCosts(1, (2, 2, 2), 1)
    objective = _synthetic(space)
    budget = MacBudget.of(1.6)
    lazy = search_schedule(space, costs, budget, objective)
    eager = search_schedule(space, costs, budget, objective, lazy=False)
    assert lazy.moves == eager.moves and lazy.error == eager.error
    assert lazy.evaluations < eager.evaluations
    need = len(lazy.moves)
    best = min(objective(frozenset(c)) for c in itertools.combinations(space.moves, need))
    wide = search_schedule(space, costs, budget, objective, beam_width=10_000)
    assert wide.error == best <= lazy.error


def test_unreachable_budgets_and_bad_budgets_are_refused():
    space = SearchSpace(2, 3, block_units(2))
    costs = SegmentCosts(10, (5, 5), 10)
    with pytest.raises(ValueError, match=r"out of reach for 3 steps: .* gives 1\.286x; lower the target"):
        check_reachable(space, costs, MacBudget.of(2.0))
    with pytest.raises(ValueError, match="exactly one of --target-speedup and --mac-fraction"):
        MacBudget.of(2.0, 0.5)
    with pytest.raises(ValueError, match=r"MAC fraction must be in \(0, 1\]"):
        MacBudget.of(mac_fraction=1.5)
    with pytest.raises(ValueError, match="overlap"):
        SearchSpace(4, 3, (block_units(4, 2)[0], block_units(4, 3)[0]))


def test_compare_final_of_identical_latents():
    x = torch.randn(2, 1, 4, 4)
    same = compare_final(x, x)
    assert same.mse == 0 and same.psnr_db == float("inf")
    assert compare_final(x + 0.1, x).relative_l2 == pytest.approx(0.1 * 4 * 2 ** 0.5 / x.norm().item(), rel=1e-5)


def test_cli_writes_a_schedule_that_plans(tmp_path, capsys):
    out = tmp_path / "sub" / "s.yaml"  # its folder is made
    assert main(["auto-schedule", "--objective", "error", "--model", "dit-tiny", "--random-weights", "--steps", "4",
                 "--seeds", "0", "1", "--target-speedup", "1.4", "--out", str(out), "--quiet"]) == 0
    assert "theoretical speedup" in capsys.readouterr().out
    spec = get_spec("dit-tiny")
    plan = plan_for(load_schedule(out), spec)
    assert plan.theoretical_speedup(costs_for(spec)) >= 1.4
    assert any(v.replay for v in plan.steps)
    text = out.read_text()
    assert text.startswith("# error-driven block caching") and "recompute:" in text
    record = json.loads((tmp_path / "sub" / "s.search.json").read_text())
    assert record["budget"]["target_speedup"] == 1.4 and record["calibration"]["seeds"] == [0, 1]
    assert record["objective"].startswith("error") and record["measured_final"]["mse"] > 0
    assert record["schedule"] == "s.yaml" and str(tmp_path) not in json.dumps(record)


@pytest.mark.parametrize("argv, message", [
    (["--target-speedup", "50"], "out of reach for 4 steps"),
    (["--target-speedup", "1.5", "--mac-fraction", "0.5"], "exactly one of --target-speedup and --mac-fraction"),
    ([], "exactly one of --target-speedup and --mac-fraction"),
    (["--target-speedup", "1.5", "--threshold", "0.1"], "drop --threshold"),
])
def test_cli_refuses_bad_error_flags(tmp_path, capsys, argv, message):
    base = ["auto-schedule", "--objective", "error", "--model", "dit-tiny", "--random-weights", "--steps", "4",
            "--out", str(tmp_path / "s.yaml"), "--quiet"]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.yaml").exists()


def test_cli_refuses_an_unknown_objective_and_error_flags_on_change_curves(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["auto-schedule", "--objective", "psnr", "--target-speedup", "1.5"])
    assert "invalid choice: 'psnr'" in capsys.readouterr().err
    assert main(["auto-schedule", "--target-speedup", "1.5"]) == 2
    assert "needs --curves FILE" in capsys.readouterr().err
    curves = tmp_path / "c.json"
    curves.write_text("{}")
    assert main(["auto-schedule", "--curves", str(curves), "--target-speedup", "1.5", "--mac-fraction", "0.5"]) == 2
    assert "--mac-fraction applies to --objective error" in capsys.readouterr().err
    assert main(["auto-schedule", "--curves", str(curves), "--target-speedup", "1.5", "--steps", "10"]) == 2
    assert "--steps applies to --objective error" in capsys.readouterr().err
