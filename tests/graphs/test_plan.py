"""Plans: the Δ-DiT and block-caching step rules, inferred records, validation, identity."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ditcache.graphs import CacheRange, Plan, PlanError, get_spec, parse_schedule
from ditcache.graphs.curves import CURVES_FORMAT, Calibration
from ditcache.graphs.macs import SegmentCosts
from ditcache.graphs.planning import plan_for
from ditcache.graphs.schedule_rules import threshold_recompute


def blocks(n: int, name: str | None = None):
    """A DiT spec with ``n`` blocks."""
    spec = get_spec("dit-tiny")
    return replace(spec, name=name or f"dit-{n}-blocks", config={**spec.config, "num_layers": n})


def delta(steps=10, boundary=4, interval=3, cached=4, nb=12):
    return plan_for(parse_schedule({"kind": "delta-dit", "steps": steps, "boundary": boundary, "interval": interval,
                                    "cached_blocks": cached}), blocks(nb))


def test_delta_dit_stage_rule():
    plan = delta()
    names = [v.name for v in plan.steps]
    # full at s % 3 == 0 and at the stage switch s == 4; back range before 4, front after
    assert names == [
        "full+rec-back", "back-skipped", "back-skipped", "full",  # step 3 feeds no back replay
        "full+rec-front", "front-skipped", "full+rec-front", "front-skipped", "front-skipped", "full",
    ]
    assert plan.range("front") == CacheRange("front", 0, 4)
    assert plan.range("back") == CacheRange("back", 8, 12)
    assert plan.boundaries == (0, 4, 8, 12)
    assert [plan.blocks_computed(s) for s in range(3)] == [12, 8, 8]


def test_records_only_where_a_later_step_replays():
    plan = delta(steps=4, boundary=4, interval=2)
    assert [v.name for v in plan.steps] == ["full+rec-back", "back-skipped", "full+rec-back", "back-skipped"]
    plan = delta(steps=3, boundary=3, interval=2)
    assert plan.steps[-1].name == "full"  # the last full step feeds nothing
    assert plan.last_use() == {"back": 1}


def test_interval_one_is_all_full():
    plan = delta(interval=1)
    assert {v.name for v in plan.steps} == {"full"}
    assert plan.ranges == ()


def test_block_cache_rule_and_names():
    plan = plan_for(parse_schedule({"kind": "block-cache", "steps": 5,
                                    "recompute": {2: [0, 3], 3: [0, 3], 5: [0, 1, 2, 3, 4]}}), blocks(6))
    assert [r.name for r in plan.ranges] == ["b2", "b3"]  # block 5 never replays: no cache range
    assert [v.name for v in plan.steps] == [
        "full+rec-2-3", "blocks-replayed-2-3", "blocks-replayed-2-3", "full+rec-2-3", "blocks-replayed-2-3"]
    assert plan.boundaries == (0, 2, 3, 4, 6)


def test_threshold_rule_accumulates_until_it_would_exceed():
    changes = [0.0, 0.5, 0.2, 0.2, 0.05, 0.9, 0.1]
    # step 1: 0.5 <= 0.6 replay; 2: 0.7 > 0.6 recompute; 3: 0.2; 4: 0.25; 5: 1.15 > recompute; 6: 0.1
    assert threshold_recompute(changes, 0.6) == [0, 2, 5]
    assert threshold_recompute(changes, 0.0) == list(range(7))
    assert threshold_recompute(changes, 10.0) == [0]


def test_replay_before_compute_and_overlap_are_rejected():
    a, b = CacheRange("a", 0, 2), CacheRange("b", 1, 3)
    with pytest.raises(PlanError, match="before any step computed it"):
        Plan.from_replays(4, [a], [{"a"}, set()])
    with pytest.raises(PlanError, match="overlapping"):
        Plan.from_replays(4, [a, b], [set(), {"a", "b"}])
    with pytest.raises(PlanError, match="outside"):
        Plan.from_replays(4, [CacheRange("c", 2, 5)], [set(), {"c"}])
    with pytest.raises(PlanError, match="cache mode"):
        Plan.from_replays(4, [a], [set(), {"a"}], cache="bogus")


def test_record_source_skips_steps_where_an_overlapping_range_was_replayed():
    a, b = CacheRange("a", 0, 3), CacheRange("b", 2, 4)
    plan = Plan.from_replays(4, [a, b], [set(), {"b"}, {"a"}])
    assert plan.steps[0].record == ("a", "b")  # step 1 cut into a's range, so a comes from step 0
    assert plan.steps[1].record == ()


def test_macs_and_speedup():
    costs = SegmentCosts(head=10, blocks=(100,) * 12, tail=10)
    plan = delta()
    macs = plan.step_macs(costs)
    assert macs[0] == 1220 and macs[1] == 820
    assert plan.total_macs(costs) == sum(macs)
    assert plan.theoretical_speedup(costs) == pytest.approx(12200 / sum(macs))


def test_hash_is_stable_and_sensitive():
    assert delta().hash() == delta().hash()
    assert delta().hash() != delta(cached=5).hash()
    assert delta().to_dict()["schedule"]["cached_blocks"] == 4


def test_table_lists_every_step():
    text = delta().table(SegmentCosts(1, (1,) * 12, 1))
    assert text.count("\n") == 10 + 2
    assert "theoretical speedup" in text


def test_live_caches():
    plan = delta(steps=4, boundary=4, interval=2)  # rec, skip, rec, skip
    assert [plan.live_after(s) for s in range(4)] == [{"back"}, set(), {"back"}, set()]


def test_typed_fields_and_the_manifest_round_trip(tmp_path):
    """A plan carries its calibration and its corrections file as typed fields; the normalized schedule keeps the
    calibration, so a plan read back from a manifest still knows it (the corrections file is the directory's)."""
    from safetensors.torch import save_file
    import torch

    curves = {"format": CURVES_FORMAT, "steps": 3, "mean": [[0, 0.5, 0.5], [0, 0.01, 0.01]],
              "meta": {"model": "m", "sampler": "ddim", "guidance": 2.0}}
    (tmp_path / "c.json").write_text(json.dumps(curves))
    save_file({"scale.b1": torch.ones(3, 4), "shift.b1": torch.zeros(3, 4)}, str(tmp_path / "ss.safetensors"))
    schedule = parse_schedule({"kind": "block-cache", "steps": 3, "threshold": 0.1, "curves": "c.json",
                               "scale_shift": "ss.safetensors"}, base_dir=tmp_path)
    plan = plan_for(schedule, blocks(2, "m"))
    assert plan.calibration == Calibration("m", "ddim", 2.0, 2)
    assert plan.corrections == tmp_path / "ss.safetensors" and plan.corrected
    back = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and back.hash() == plan.hash()
    assert back.calibration == plan.calibration and back.corrections is None
    assert delta().calibration is None and delta().corrections is None
