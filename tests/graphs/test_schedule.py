"""schedule.yaml validation: every mistake gets a message that says the fix."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from ditcache.graphs import ScheduleError, dit_costs, get_spec, load_schedule, parse_schedule
from ditcache.graphs.curves import CURVES_FORMAT, ChangeCurves, CurvesError
from ditcache.graphs.planning import plan_for


def err(data, match, **kw):
    with pytest.raises(ScheduleError, match=match):
        parse_schedule(data, **kw)


def blocks(n: int, name: str | None = None):
    """A DiT spec with ``n`` blocks (plans only need the block count and a name)."""
    spec = get_spec("dit-tiny")
    return replace(spec, name=name or f"dit-{n}-blocks", config={**spec.config, "num_layers": n})


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
        plan_for(sched, get_spec("dit-xl"))
    sched = parse_schedule({"kind": "block-cache", "steps": 5, "recompute": {28: [0]}})
    with pytest.raises(ScheduleError, match="names block 28"):
        plan_for(sched, get_spec("dit-xl"))


def test_boundary_fraction_and_default():
    s = parse_schedule({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "boundary_fraction": 0.4})
    assert s.boundary == 8
    s = parse_schedule({"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4})
    assert s.boundary == 10 and (s.interval, s.cached_blocks, s.cache) == (2, 4, "offset")


@pytest.mark.parametrize("target", [1.3, 1.6, 2.0])
def test_target_speedup_is_met_gently(target):
    spec = get_spec("dit-xl")
    costs = dit_costs(spec)
    schedule = parse_schedule({"kind": "delta-dit", "steps": 20, "target_speedup": target})
    assert schedule.interval is None and schedule.target_speedup == target  # solved per model, at plan time
    plan = plan_for(schedule, spec)
    achieved = plan.theoretical_speedup(costs)
    assert achieved >= target
    assert achieved < target * 1.1
    solved = plan.to_dict()["schedule"]
    assert solved["interval"] >= 2 and plan.range("front").end == solved["cached_blocks"] <= 28


def test_unreachable_target():
    with pytest.raises(ScheduleError, match="out of reach"):
        plan_for(parse_schedule({"kind": "delta-dit", "steps": 3, "target_speedup": 50}), get_spec("dit-xl"))


def test_threshold_with_curves_file(tmp_path):
    curves = {"format": CURVES_FORMAT, "steps": 4, "num_blocks": 2,
              "mean": [[0, 0.05, 0.05, 0.05], [0, 0.5, 0.5, 0.5]]}
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    (tmp_path / "s.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.12\ncurves: curves.json\n")
    sched = load_schedule(tmp_path / "s.yaml")
    assert sched.recompute == {0: [0, 3], 1: [0, 1, 2, 3]} and sched.threshold == 0.12
    plan = plan_for(sched, blocks(2))
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
    assert sched.boundary == 5
    assert plan_for(sched, blocks(4, "x")).steps[5].name.startswith("full")
    with pytest.raises(ScheduleError, match="model with 4 blocks"):
        plan_for(sched, blocks(12, "x"))
    with pytest.raises(ScheduleError, match="calibrated on x, not dit-tiny: use it with --model x"):
        plan_for(sched, get_spec("dit-tiny"))
    err({"kind": "delta-dit", "steps": 10, "boundary": "auto", "interval": 2}, "'boundary: auto' needs")
    err({"kind": "delta-dit", "steps": 10, "boundary": 3, "interval": 2, "cached_blocks": 2, "curves": "c.json"},
        "only used with 'boundary: auto'")


# ---- bad files ------------------------------------------------------------------------------------
def test_duplicate_key_is_refused_with_its_line(tmp_path):
    (tmp_path / "s.yaml").write_text("kind: delta-dit\nsteps: 20\nboundary: 10\ninterval: 2\ncached_blocks: 4\n"
                                     "boundary: 11\n")
    with pytest.raises(ScheduleError, match=r"s.yaml: line 6: key 'boundary' is given twice \(first on line 3\)"):
        load_schedule(tmp_path / "s.yaml")
    (tmp_path / "r.yaml").write_text("kind: block-cache\nsteps: 4\nrecompute:\n  1: [0, 2]\n  1: [0]\n")
    with pytest.raises(ScheduleError, match="line 5: key 1 is given twice"):
        load_schedule(tmp_path / "r.yaml")
    (tmp_path / "ok.yaml").write_text("kind: block-cache\nsteps: 4\nrecompute:\n  1: &a [0, 2]\n  2: *a\n")
    assert load_schedule(tmp_path / "ok.yaml").recompute == {1: [0, 2], 2: [0, 2]}  # anchors are not duplicates


def test_non_utf8_files_are_named(tmp_path):
    (tmp_path / "s.yaml").write_bytes(b"kind: full\nsteps: 4\n# \xff\xfe\n")
    with pytest.raises(ScheduleError, match=r"s.yaml: not UTF-8 text \(byte 22"):
        load_schedule(tmp_path / "s.yaml")
    (tmp_path / "c.json").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "t.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.1\ncurves: c.json\n")
    with pytest.raises(ScheduleError, match=r"t.yaml: .*c.json: not UTF-8 text"):
        load_schedule(tmp_path / "t.yaml")


def _write_curves(folder, steps=4, meta=None, **extra):
    data = {"format": CURVES_FORMAT, "steps": steps, "num_blocks": 2,
            "mean": [[0] + [0.05] * (steps - 1), [0] + [0.5] * (steps - 1)], "meta": meta or {}, **extra}
    (folder / "curves.json").write_text(json.dumps(data))
    return folder / "curves.json"


def test_the_one_curves_reader(tmp_path):
    path = _write_curves(tmp_path, meta={"model": "dit-tiny", "sampler": "ddim", "guidance": 1.5})
    curves = ChangeCurves.load(path)
    assert (curves.num_blocks, curves.steps, curves.mean[1][1]) == (2, 4, 0.5)
    assert curves.calibration.to_dict() == {"model": "dit-tiny", "sampler": "ddim", "guidance": 1.5, "num_blocks": 2}
    for extra, match in (({"colour": 1}, "unknown key 'colour'"), ({"num_blocks": 3}, "'mean' has 2 rows"),
                         ({"format": "other/1"}, "not a ditcache curves file"), ({"count": -1}, "'count'")):
        _write_curves(tmp_path, **extra)
        with pytest.raises(CurvesError, match=match):
            ChangeCurves.load(path)
    path.write_text(path.read_text().replace("0.05", "NaN"))
    with pytest.raises(CurvesError, match="not a finite number"):
        ChangeCurves.load(path)
    with pytest.raises(CurvesError, match="does not exist; make one with `ditcache calibrate`"):
        ChangeCurves.load(tmp_path / "missing.json")
    _write_curves(tmp_path, meta={"measured": "6 given modules, not the blocks: not for schedules"})
    (tmp_path / "s.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.1\ncurves: curves.json\n")
    with pytest.raises(ScheduleError, match="these curves measure 6 given modules"):
        load_schedule(tmp_path / "s.yaml")


# ---- calibration identity -------------------------------------------------------------------------
def test_plan_for_checks_the_calibration_identity(tmp_path):
    _write_curves(tmp_path, meta={"model": "dit-tiny", "sampler": "ddim", "guidance": 1.5})
    (tmp_path / "s.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.12\ncurves: curves.json\n")
    schedule = load_schedule(tmp_path / "s.yaml")
    tiny2 = blocks(2, "dit-tiny")
    plan = plan_for(schedule, tiny2, sampler="ddim", guidance=1.5)
    assert plan.calibration == schedule.calibration and plan.calibration.model == "dit-tiny"
    with pytest.raises(ScheduleError, match=r"calibrated on dit-tiny, not dit-2-blocks: use it with --model dit-tiny"):
        plan_for(schedule, blocks(2))
    with pytest.raises(ScheduleError, match=r"with sampler 'ddim', the request uses 'dpm\+\+'; sample with "
                                            r"--scheduler ddim, or calibrate again with --scheduler dpm\+\+"):
        plan_for(schedule, tiny2, sampler="dpm++")
    with pytest.raises(ScheduleError, match="with guidance 1.5, the request uses 4.0"):
        plan_for(schedule, tiny2, guidance=4.0)


def test_shipped_calibrated_schedule_refuses_another_model():
    schedule = load_schedule("schedules/fmnist-calibrated/blockcache-1.3x.yaml")
    assert plan_for(schedule, get_spec("dit-fmnist")).num_blocks == 12
    with pytest.raises(ScheduleError, match=r"blockcache-1.3x.yaml: its curves were calibrated on dit-fmnist, not "
                                            r"dit-b: use it with --model dit-fmnist, or calibrate dit-b"):
        plan_for(schedule, get_spec("dit-b"))  # also 12 blocks: only the identity tells them apart


# ---- paths ------------------------------------------------------------------------------------------
def test_normalized_schedule_holds_no_path(tmp_path):
    """Two copies of the same files in different folders: the same normalized schedule and plan hash; another
    scale/shift content: another hash."""
    from safetensors.torch import save_file
    import torch

    plans = []
    for name in ("a", "b/c"):
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        _write_curves(folder / "sub", meta={"model": "x"})
        save_file({"scale.b1": torch.ones(4, 8), "shift.b1": torch.zeros(4, 8)}, str(folder / "ss.safetensors"))
        (folder / "s.yaml").write_text("kind: block-cache\nsteps: 4\nthreshold: 0.12\ncurves: sub/curves.json\n"
                                       "scale_shift: ss.safetensors\n")
        schedule = load_schedule(folder / "s.yaml")
        assert schedule.corrections == (folder / "ss.safetensors").resolve()
        plans.append(plan_for(schedule, blocks(2, "x")))
    a, b = plans
    assert a.schedule == b.schedule and a.hash() == b.hash()
    assert a.corrections != b.corrections and a.corrected
    assert {"curves_sha256", "scale_shift_sha256"} <= set(a.schedule)
    assert str(tmp_path) not in json.dumps(a.to_dict())
    save_file({"scale.b1": torch.full((4, 8), 2.0), "shift.b1": torch.zeros(4, 8)}, str(tmp_path / "a/ss.safetensors"))
    assert plan_for(load_schedule(tmp_path / "a/s.yaml"), blocks(2, "x")).hash() != b.hash()
    shutil.rmtree(tmp_path / "b")
