"""schedule.yaml validation: every mistake gets a message that says the fix."""

from __future__ import annotations

import json

import pytest

from ditcache.graphs import ScheduleError, dit_costs, get_spec, load_schedule, parse_schedule
from ditcache.graphs.schedule import CURVES_FORMAT


def err(data, match, **kw):
    with pytest.raises(ScheduleError, match=match):
        parse_schedule(data, **kw)


def test_rejections():
    err([1], "mapping")
    err({"kind": "fast"}, "'kind' must be one of")
    err({"kind": "full"}, "'steps' is required")
    err({"kind": "full", "steps": 0}, ">= 1")
    err({"kind": "full", "steps": "20"}, "integer")
    err({"kind": "full", "steps": 20, "interval": 2}, "unknown key 'interval' for kind full")
    err({"kind": "delta-dit", "steps": 20, "intervl": 2}, "did you mean 'interval'")
    err({"kind": "delta-dit", "steps": 20, "interval": 2}, "needs 'interval'")
    err({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "boundary": 21}, "<= 20")
    err({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "boundary": 5, "boundary_fraction": .5},
        "not both")
    err({"kind": "delta-dit", "steps": 20, "target_speedup": 1.5, "interval": 2}, "solves for")
    err({"kind": "delta-dit", "steps": 20, "target_speedup": 1.0}, r"\(1.0, 100.0\]")
    err({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "cache": "delta"}, "'offset'")
    err({"kind": "block-cache", "steps": 5}, "either 'recompute'")
    err({"kind": "block-cache", "steps": 5, "recompute": {1: [1, 2]}}, "must include step 0")
    err({"kind": "block-cache", "steps": 5, "recompute": {1: [0, 7]}}, "outside")
    err({"kind": "block-cache", "steps": 5, "recompute": [0, 1]}, "must map")
    err({"kind": "block-cache", "steps": 5, "threshold": 0.1}, "needs 'curves")


def test_model_dependent_errors():
    sched = parse_schedule({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 30})
    with pytest.raises(ScheduleError, match="model has 28 blocks"):
        sched.to_plan(28)
    sched = parse_schedule({"kind": "block-cache", "steps": 5, "recompute": {28: [0]}})
    with pytest.raises(ScheduleError, match="names block 28"):
        sched.to_plan(28)


def test_boundary_fraction_and_default():
    s = parse_schedule({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "boundary_fraction": 0.4})
    assert s.params["boundary"] == 8
    s = parse_schedule({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4})
    assert s.params["boundary"] == 10


@pytest.mark.parametrize("target", [1.3, 1.6, 2.0])
def test_target_speedup_is_met_gently(target):
    spec = get_spec("dit-xl")
    costs = dit_costs(spec)
    plan = parse_schedule({"kind": "delta-dit", "steps": 20, "target_speedup": target}).to_plan(28, costs)
    achieved = plan.theoretical_speedup(costs)
    assert achieved >= target
    assert achieved < target * 1.1
    assert plan.schedule["interval"] >= 2 and 1 <= plan.schedule["cached_blocks"] <= 28


def test_unreachable_target():
    with pytest.raises(ScheduleError, match="out of reach"):
        parse_schedule({"kind": "delta-dit", "steps": 3, "target_speedup": 50}).to_plan(28)


def test_threshold_with_curves_file(tmp_path):
    curves = {"format": CURVES_FORMAT, "steps": 4, "num_blocks": 2,
              "mean": [[0, 0.05, 0.05, 0.05], [0, 0.5, 0.5, 0.5]]}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    (tmp_path / "s.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.12\ncurves: curves.json\n")
    sched = load_schedule(tmp_path / "s.yaml")
    assert sched.params["recompute"] == {0: [0, 3], 1: [0, 1, 2, 3]}
    plan = sched.to_plan(2)
    assert [v.name for v in plan.steps] == ["full+rec-0", "blocks-replayed-0", "blocks-replayed-0", "full"]
    (tmp_path / "s8.yaml").write_text("kind: block-cache\nsteps: 8\nthreshold: 0.12\ncurves: curves.json\n")
    with pytest.raises(ScheduleError, match="calibrate again with --steps 8"):
        load_schedule(tmp_path / "s8.yaml")


def test_file_errors(tmp_path):
    with pytest.raises(ScheduleError, match="does not exist"):
        load_schedule(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("kind: [full\n")
    with pytest.raises(ScheduleError, match="not valid YAML"):
        load_schedule(tmp_path / "bad.yaml")


def test_delta_dit_boundary_from_curves(tmp_path):
    from ditcache.graphs.schedule_rules import boundary_from_curves

    steps, nb = 10, 4
    # front blocks move a lot early and little late, back blocks the reverse: replaying back early and
    # front late is cheapest when the switch sits where the curves cross
    mean = [[0.0] + [0.5 if s < 6 else 0.01 for s in range(1, steps)] for _ in range(2)] + \
           [[0.0] + [0.01 if s < 6 else 0.5 for s in range(1, steps)] for _ in range(2)]
    assert boundary_from_curves(mean, steps, interval=2, cached_blocks=2) == 5  # switch step 5 is full
    curves = {"format": CURVES_FORMAT, "steps": steps, "num_blocks": nb, "mean": mean, "meta": {"model": "x"}}
    (tmp_path / "c.json").write_text(json.dumps(curves))
    (tmp_path / "s.yaml").write_text("kind: delta-dit\nsteps: 10\nboundary: auto\ninterval: 2\ncached_blocks: 2\n"
                                     "curves: c.json\n")
    sched = load_schedule(tmp_path / "s.yaml")
    assert sched.params["boundary"] == 5
    assert sched.to_plan(4).steps[5].name.startswith("full")
    with pytest.raises(ScheduleError, match="model with 4 blocks"):
        sched.to_plan(12)
    err({"kind": "delta-dit", "steps": 10, "boundary": "auto", "interval": 2}, "'boundary: auto' needs")
    err({"kind": "delta-dit", "steps": 10, "boundary": 3, "interval": 2, "cached_blocks": 2, "curves": "c.json"},
        "only used with 'boundary: auto'")
