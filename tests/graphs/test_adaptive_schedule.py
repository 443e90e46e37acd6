"""kind: adaptive in the one schedule representation and the one plan function: validation, normalization, the plan's
fixed and decided steps, its MACs bounds, the manifest round trip and the typed config."""

from __future__ import annotations

import pytest

from ditcache.graphs import costs_for, get_spec, parse_schedule
from ditcache.graphs.adaptive import AdaptivePlan, plan_from_dict, replays_possible
from ditcache.graphs.configs import AdaptiveConfig, config_from_file
from ditcache.graphs.planning import plan_for
from ditcache.graphs.schedule import ScheduleError

BASE = {"kind": "adaptive", "steps": 10, "threshold": 0.1}


@pytest.mark.parametrize("change,message", [
    ({"threshold": None}, "needs 'threshold'"),
    ({"threshold": -1}, "'threshold' must be a number >= 0"),
    ({"warmup": 0}, "nothing to replay"),
    ({"signal": "magnitude"}, "'signal' must be one of first-block, modulated-input"),
    ({"replay": [0, 3]}, "must start at block >= 1"),
    ({"replay": [3, 2]}, "block range"),
    ({"warmup": 6, "final": 5}, "exceed the 10 steps"),
    ({"rescale": "x"}, "polynomial coefficients"),
    ({"treshold": 0.1}, "did you mean 'threshold'"),
])
def test_bad_adaptive_schedules_are_refused(change, message):
    data = {**BASE, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(data, "s.yaml")


def test_plan_fixes_the_programs_and_leaves_the_replays_to_the_run():
    spec = get_spec("dit-tiny")
    schedule = parse_schedule({**BASE, "max_consecutive": 2, "final": 2})
    assert schedule.to_dict() == {"kind": "adaptive", "steps": 10, "cache": "offset", "final": 2,
                                  "max_consecutive": 2, "replay": "rest", "rescale": [], "signal": "first-block",
                                  "threshold": 0.1, "warmup": 2}
    plan = plan_for(schedule, spec)
    assert isinstance(plan, AdaptivePlan) and (plan.replay_range.start, plan.replay_range.end) == (1, 4)
    assert plan.fixed_steps == (0, 1, 8, 9) and plan.decided_steps == (2, 3, 4, 5, 6, 7)
    assert plan.max_replays() == 4  # r r c r r c
    costs = costs_for(spec)
    low, high = plan.macs_bounds(costs)
    assert high == 10 * costs.full and low == high - 4 * sum(costs.blocks[1:4])
    again = plan_from_dict(plan.to_dict())
    assert again == plan and again.hash() == plan.hash()
    modulated = plan_for(parse_schedule({**BASE, "signal": "modulated-input"}), spec)
    assert (modulated.replay_range.start, modulated.replay_range.end) == (0, 4)
    assert replays_possible(plan.policy, [False, False, True, True, False, True, True, False, False, False])
    assert not replays_possible(plan.policy, [False, False, True, True, True] + [False] * 5)
    assert not replays_possible(plan.policy, [False, True] + [False] * 8)


def test_plan_refuses_what_does_not_fit_the_model():
    with pytest.raises(ScheduleError, match="outside the model's 4 blocks"):
        plan_for(parse_schedule({**BASE, "replay": [1, 9]}, "s.yaml"), get_spec("dit-tiny"))
    with pytest.raises(ScheduleError, match="U-Net"):
        plan_for(parse_schedule(BASE, "s.yaml"), get_spec("unet-tiny"))


def test_adaptive_config_round_trip(tmp_path):
    config = AdaptiveConfig(steps=10, threshold=0.2, signal="modulated-input", replay=(0, 3), rescale=(1.5, 0.0))
    path = tmp_path / "a.yaml"
    path.write_text(config.to_yaml(path))
    loaded = config_from_file(path)
    assert isinstance(loaded, AdaptiveConfig) and loaded.to_schedule().to_dict() == config.to_schedule().to_dict()
    assert loaded.to_schedule().params["replay"] == [0, 3]
    with pytest.raises(ScheduleError, match="'threshold' must be a number"):
        AdaptiveConfig(steps=10, threshold=-0.5)
