"""calibrate (streamed change curves) -> auto schedule -> export-engines -> compiled runner, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from ditcache.cli import main
from ditcache.compiler.runtime.sampling import SampleRequest, model_denoiser, sample
from ditcache.compiler.calibration.curves import ChangeCurves, calibrate, relative_l1, save_curves
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.graphs import ScheduleError, get_spec, load_schedule
from ditcache.graphs.planning import plan_for
from ditcache.graphs.auto_schedule import plan_for_threshold, threshold_for_target

STEPS = 6


@pytest.fixture(scope="module")
def curves(tiny_model, tiny_spec):
    requests = [SampleRequest((1, 2), STEPS, 4.0, seed) for seed in (0, 1)]
    return calibrate(tiny_model, tiny_spec, requests, "sha")


def test_relative_l1():
    a, b = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    torch.testing.assert_close(relative_l1(a, b), torch.ones(2))
    torch.testing.assert_close(relative_l1(a, a), torch.zeros(2))


def test_curves_equal_a_hoarding_reference(curves, tiny_model, tiny_spec):
    """Keep every block output of every step, then average: the streamed statistics must agree."""
    outputs: dict[tuple[int, int], torch.Tensor] = {}
    step = {"s": -1}
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__((i, step["s"]), o.clone()))
             for i, b in enumerate(tiny_model.transformer_blocks)]
    per_cell: dict[tuple[int, int], list[torch.Tensor]] = {}
    try:
        for seed in (0, 1):
            outputs.clear()

            def denoise(inputs):
                step["s"] += 1
                return model_denoiser(tiny_model)(inputs)

            step["s"] = -1
            sample(denoise, tiny_spec, SampleRequest((1, 2), STEPS, 4.0, seed))
            for (i, s), out in outputs.items():
                if s > 0:
                    prev = outputs[(i, s - 1)]
                    ratio = (out - prev).flatten(1).abs().sum(1) / out.flatten(1).abs().sum(1)
                    per_cell.setdefault((i, s), []).append(ratio)
    finally:
        for h in hooks:
            h.remove()
    assert curves.count == 8  # 2 seeds x model batch 4 (2 classes, doubled by guidance)
    for (i, s), ratios in per_cell.items():
        values = torch.cat(ratios).double()
        assert curves.mean[i][s] == pytest.approx(values.mean().item(), rel=1e-6)
        assert curves.std[i][s] == pytest.approx(values.std().item(), rel=1e-4)
    assert all(row[0] == 0 for row in curves.mean)


def test_threshold_for_target_is_minimal(curves):
    delta = threshold_for_target(curves.mean, 1.4)
    assert plan_for_threshold(curves.mean, delta).theoretical_speedup(_unit()) >= 1.4
    assert plan_for_threshold(curves.mean, delta * 0.98).theoretical_speedup(_unit()) < 1.4
    with pytest.raises(ValueError, match="out of reach"):
        threshold_for_target(curves.mean, 100.0)


def _unit():
    from ditcache.graphs.macs import SegmentCosts

    return SegmentCosts(0, (1,) * 4, 0)


def test_calibrate_schedule_export_run(tmp_path, curves, capsys):
    curves.meta["model"] = "dit-tiny"
    save_curves(curves, tmp_path / "curves.json")
    assert main(["auto-schedule", "--curves", str(tmp_path / "curves.json"), "--target-speedup", "1.3",
                 "--out", str(tmp_path / "s.yaml")]) == 0
    assert "theoretical speedup" in capsys.readouterr().out
    schedule = load_schedule(tmp_path / "s.yaml")
    assert schedule.calibration.sampler == "ddim" and schedule.calibration.model == "dit-tiny"
    assert main(["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", str(tmp_path / "s.yaml"),
                 "--backend", "eager", "--out", str(tmp_path / "eng"), "--batch-size", "2", "--quiet"]) == 0
    assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", "3", "4", "--schedule",
                 str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 0
    latents = torch.load(tmp_path / "o" / "latents.pt")
    spec = get_spec("dit-tiny")
    from ditcache.graphs import load_model

    model, _ = load_model(spec, random_weights=True)
    full = sample(model_denoiser(model), spec, SampleRequest((3, 4), STEPS, 4.0, 0))
    assert latents.shape == full.shape and (latents - full).abs().max() > 1e-4
    # another sampler than the curves were measured with is refused
    assert main(["run", "--engines", str(tmp_path / "eng"), "--classes", "3", "4", "--scheduler", "dpm++",
                 "--out", str(tmp_path / "o")]) == 2
    assert "calibrated with sampler 'ddim'" in capsys.readouterr().err


def test_calibration_for_another_model_or_steps_is_refused(tmp_path, curves, tiny_spec):
    curves.meta["model"] = "dit-s"
    save_curves(curves, tmp_path / "curves.json")
    (tmp_path / "s.yaml").write_text(f"kind: block-cache\nsteps: {STEPS}\nthreshold: 0.2\ncurves: curves.json\n")
    with pytest.raises(ValueError, match="calibrated on dit-s, not dit-tiny"):
        plan_for(load_schedule(tmp_path / "s.yaml"), tiny_spec)
    with pytest.raises(ScheduleError, match="model with 4 blocks, dit-s has 12"):
        plan_for(load_schedule(tmp_path / "s.yaml"), get_spec("dit-s"))
    (tmp_path / "s8.yaml").write_text("kind: block-cache\nsteps: 8\nthreshold: 0.2\ncurves: curves.json\n")
    with pytest.raises(ScheduleError, match="measured for 6 steps"):
        load_schedule(tmp_path / "s8.yaml")


def test_curves_file_roundtrip_and_plot(tmp_path, curves):
    save_curves(curves, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["format"] == "ditcache-curves/1"
    assert ChangeCurves.load(tmp_path / "c.json").mean == curves.mean
    pytest.importorskip("matplotlib", reason="plots need the bench extra")
    from ditcache.compiler.calibration.curves import plot_curves

    plot_curves(curves, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
