"""The ``ditcache`` command line: show-plan, sample, and its error handling (exit code 2, stderr)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

from ditcache.cli import main
from ditcache.graphs import dit_costs, get_spec, parse_schedule
from ditcache.graphs.planning import plan_for

DELTA = {"kind": "delta-dit", "steps": 4, "boundary": 2, "interval": 2, "cached_blocks": 2}


def write_schedule(tmp_path, data, name="schedule.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


# ---- show-plan ---------------------------------------------------------------------------------------
def test_show_plan_table(capsys, tmp_path):
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, DELTA)]) == 0
    out = capsys.readouterr().out
    assert "dit-tiny (4 blocks)" in out
    assert "back-skipped" in out and "front-skipped" in out and "full+rec-back" in out
    assert "theoretical speedup" in out
    step_rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(step_rows) == DELTA["steps"]


def test_show_plan_full_schedule_default(capsys):
    assert main(["show-plan", "--model", "dit-tiny", "--steps", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["steps"] == ["full"] * 3
    assert data["theoretical_speedup"] == pytest.approx(1.0)


def test_show_plan_json(capsys, tmp_path):
    path = write_schedule(tmp_path, DELTA)
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", path, "--batch", "2", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # nothing but JSON on stdout
    spec = get_spec("dit-tiny")
    costs = dit_costs(spec, 2)
    plan = plan_for(parse_schedule(DELTA), spec)
    assert data["model"] == "dit-tiny"
    assert data["step_macs"] == plan.step_macs(costs)
    assert data["theoretical_speedup"] == pytest.approx(plan.theoretical_speedup(costs))
    assert data["theoretical_speedup"] > 1
    assert isinstance(data["plan_hash"], str) and len(data["plan_hash"]) == 64
    int(data["plan_hash"], 16)
    assert data["steps"] == [v.name for v in plan.steps]

    # the hash is stable across runs and changes with the schedule
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan_hash"] == data["plan_hash"]
    other = write_schedule(tmp_path, {**DELTA, "interval": 3}, "other.yaml")
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", other, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan_hash"] != data["plan_hash"]


def test_show_plan_needs_no_weights_for_dit_xl(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_home"))
    schedule = write_schedule(tmp_path, {"kind": "delta-dit", "steps": 20, "target_speedup": 1.5})
    assert main(["show-plan", "--model", "dit-xl", "--schedule", schedule, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_blocks"] == 28 and data["theoretical_speedup"] >= 1.5


def test_invalid_schedule_key(capsys, tmp_path):
    bad = {**DELTA, "intervall": 2}
    del bad["interval"]
    code = main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, bad)])
    assert code == 2
    captured = capsys.readouterr()
    assert "'intervall'" in captured.err and "did you mean 'interval'" in captured.err
    assert captured.err.startswith("ditcache show-plan: error:")
    assert captured.out == ""


def test_missing_schedule_file(capsys, tmp_path):
    assert main(["show-plan", "--model", "dit-tiny", "--schedule", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_show_plan_steps_contradict_schedule(capsys, tmp_path):
    code = main(["show-plan", "--model", "dit-tiny", "--schedule", write_schedule(tmp_path, DELTA), "--steps", "5"])
    assert code == 2
    assert "--steps 5 contradicts" in capsys.readouterr().err


# ---- sample -------------------------------------------------------------------------------------------
def sample_args(out, *extra):
    return ["sample", "--model", "dit-tiny", "--random-weights", "--classes", "1", "2", "--quiet",
            "--out", str(out), *extra]


def read_latents(out):
    pt = torch.load(out / "latents.pt", weights_only=True)
    npy = np.load(out / "latents.npy")
    torch.testing.assert_close(torch.from_numpy(npy), pt, rtol=0, atol=0)
    return pt


def test_sample_random_weights(capsys, tmp_path):
    out = tmp_path / "full"
    assert main(sample_args(out, "--steps", "3")) == 0
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err
    assert "no image written" in captured.out
    latents = read_latents(out)
    spec = get_spec("dit-tiny")
    assert latents.shape == (2, spec.in_channels, spec.sample_size, spec.sample_size)
    assert torch.isfinite(latents).all()

    # same seed, same latents
    again = tmp_path / "again"
    assert main(sample_args(again, "--steps", "3")) == 0
    torch.testing.assert_close(read_latents(again), latents, rtol=0, atol=0)


def test_sample_with_delta_dit_schedule(capsys, tmp_path):
    schedule = write_schedule(tmp_path, DELTA)
    cached = tmp_path / "cached"
    assert main(sample_args(cached, "--schedule", schedule)) == 0
    assert "delta-dit schedule" in capsys.readouterr().out
    # --steps equal to the schedule's is accepted
    assert main(sample_args(tmp_path / "same", "--schedule", schedule, "--steps", "4")) == 0
    full = tmp_path / "full"
    assert main(sample_args(full, "--steps", "4")) == 0
    got, ref = read_latents(cached), read_latents(full)
    assert got.shape == ref.shape == (2, 4, 8, 8)
    assert not torch.equal(got, ref), "cached steps replayed nothing"
    torch.testing.assert_close(read_latents(tmp_path / "same"), got, rtol=0, atol=0)


def test_sample_steps_contradict_schedule(capsys, tmp_path):
    out = tmp_path / "out"
    code = main(sample_args(out, "--schedule", write_schedule(tmp_path, DELTA), "--steps", "3"))
    assert code == 2
    err = capsys.readouterr().err
    assert "--steps 3 contradicts the schedule's steps: 4" in err
    assert not (out / "latents.pt").exists()


def test_sample_weight_errors_exit_2(capsys, tmp_path):
    base = ["sample", "--model", "dit-tiny", "--steps", "2", "--classes", "1", "--quiet", "--out", str(tmp_path)]
    assert main([*base, "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--weights", str(tmp_path), "--random-weights"]) == 2
    assert "not both" in capsys.readouterr().err


def test_sample_class_out_of_range(capsys, tmp_path):
    args = ["sample", "--model", "dit-tiny", "--random-weights", "--steps", "2", "--classes", "1000", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert "class 1000" in capsys.readouterr().err


# ---- bad input: refused by the parser, before any work, exit 2, no traceback -----------------------------
FOLDER_OUTPUTS = {  # command line with {out} where the output folder goes
    "sample": ["sample", "--model", "dit-tiny", "--random-weights", "--steps", "2", "--out", "{out}"],
    "run": ["run", "--engines", "no-engines-needed", "--classes", "1", "--out", "{out}"],
    "export-engines": ["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", "s.yaml",
                       "--out", "{out}"],
    "generate": ["generate", "--model", "dit-tiny", "--random-weights", "--num-samples", "2", "--out", "{out}"],
    "demo": ["demo", "--out", "{out}"],
}
FILE_OUTPUTS = {  # command line with {out} where an output file goes
    "calibrate": ["calibrate", "--model", "dit-tiny", "--random-weights", "--out", "{out}"],
    "calibrate --plot": ["calibrate", "--model", "dit-tiny", "--random-weights", "--plot", "{out}"],
    "auto-schedule": ["auto-schedule", "--curves", "{curves}", "--threshold", "0.1", "--out", "{out}"],
    "fit-correction": ["fit-correction", "--model", "dit-tiny", "--random-weights", "--schedule", "s.yaml",
                       "--out", "{out}"],
    "fit-correction --schedule-out": ["fit-correction", "--model", "dit-tiny", "--random-weights", "--schedule",
                                      "s.yaml", "--schedule-out", "{out}"],
}


def refused(argv: list[str], capsys) -> str:
    """Run ``argv``, expect the parser's refusal (exit 2); its stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: argument" in err
    return err


def fill(template: list[str], out, tmp_path) -> list[str]:
    (tmp_path / "curves.json").write_text("{}")
    return [a.format(out=out, curves=tmp_path / "curves.json") for a in template]


@pytest.mark.parametrize("command", FOLDER_OUTPUTS)
def test_out_folder_that_is_a_file_is_refused(command, tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    err = refused(fill(FOLDER_OUTPUTS[command], existing, tmp_path), capsys)
    assert f"argument --out: {existing} is a file, not a folder" in err and "give a folder you can write to" in err
    assert existing.read_text() == "keep me"
    # a folder that cannot be created: its parent is a regular file (root writes anywhere, so no chmod here)
    err = refused(fill(FOLDER_OUTPUTS[command], existing / "sub", tmp_path), capsys)
    assert f"{existing} is a file, so the folder {existing / 'sub'} cannot be created" in err
    assert existing.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.json",
                                                                                            "results.txt"]


@pytest.mark.parametrize("command", FILE_OUTPUTS)
def test_out_file_that_is_a_folder_or_under_a_file_is_refused(command, tmp_path, capsys):
    err = refused(fill(FILE_OUTPUTS[command], tmp_path, tmp_path), capsys)
    assert f"{tmp_path} is a folder, not a file" in err and "give a file path in a folder you can write to" in err
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    err = refused(fill(FILE_OUTPUTS[command], blocker / "sub" / "x.out", tmp_path), capsys)
    assert f"{blocker} is a file, so the folder {blocker / 'sub'} cannot be created" in err


def test_out_folder_where_no_file_can_be_created_is_refused(tmp_path, capsys, monkeypatch):
    """The probe write: os.access says yes to root even on 0500 folders; a failing create (read-only mount) is
    caught too."""
    import ditcache.cli.arguments as arguments

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(arguments.tempfile, "mkstemp", read_only)
    err = refused(sample_args(tmp_path / "new", "--steps", "2"), capsys)
    assert f"cannot create files in {tmp_path} (Permission denied)" in err
    assert not (tmp_path / "new").exists()


def test_unwritable_folder_by_mode(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes in 0500 folders; the probe test above covers what root cannot write")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = refused(sample_args(locked / "out", "--steps", "2"), capsys)
    assert f"{locked} is not writable" in err


def test_the_default_corrected_schedule_path_is_checked_before_work(tmp_path):
    from ditcache.cli.arguments import check_output_file

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"the corrected schedule: .*blocker is a file, not a folder; give a file path"):
        check_output_file(blocker / "s-corrected.yaml", "the corrected schedule")
    check_output_file(tmp_path / "s-corrected.yaml", "the corrected schedule")  # fine: no error, nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


BAD_NUMBERS = [
    (["sample", "--steps", "0"], "argument --steps: must be at least 1, got 0; give a whole number of at least 1"),
    (["sample", "--steps", "-3"], "argument --steps: must be at least 1, got -3"),
    (["sample", "--steps", "2.5"], "argument --steps: expected a whole number, got '2.5'"),
    (["sample", "--guidance", "nan"], "argument --guidance: must be a finite number, got 'nan'; give a guidance "
                                      "scale such as 4.0 (<= 1 disables guidance)"),
    (["sample", "--guidance", "inf"], "argument --guidance: must be a finite number"),
    (["sample", "--guidance", "-1"], "argument --guidance: must be at least 0, got -1"),
    (["sample", "--seed", "-1"], "argument --seed: must be at least 0, got -1; give a seed from 0 to 2**63 - 1"),
    (["sample", "--seed", str(2**63)], "argument --seed: must be below 2**63"),
    (["sample", "--classes", "1", "-2"], "argument --classes: must be at least 0, got -2"),
    (["show-plan", "--steps", "0"], "argument --steps: must be at least 1"),
    (["show-plan", "--batch", "0"], "argument --batch: must be at least 1"),
    (["run", "--engines", "e", "--repeats", "0"], "argument --repeats: must be at least 1"),
    (["export-engines", "--schedule", "s.yaml", "--out", "e", "--batch-size", "0"], "argument --batch-size: must be "
                                                                                     "at least 1"),
    (["export-engines", "--schedule", "s.yaml", "--out", "e", "--resolution", "-256"], "argument --resolution: must "
                                                                                       "be at least 1"),
    (["calibrate", "--steps", "0"], "argument --steps: must be at least 1"),
    (["calibrate", "--seeds", "0", "-1"], "argument --seeds: must be at least 0"),
    (["auto-schedule", "--curves", "c.json", "--threshold", "nan"], "argument --threshold: must be a finite number"),
    (["auto-schedule", "--curves", "c.json", "--target-speedup", "0.5"], "argument --target-speedup: must be at "
                                                                         "least 1, got 0.5; give a speedup of at least 1"),
    (["fit-correction", "--schedule", "s.yaml", "--lr", "0"], "argument --lr: must be above 0, got 0"),
    (["fit-correction", "--schedule", "s.yaml", "--epochs", "0"], "argument --epochs: must be at least 1"),
    (["generate", "--out", "g", "--num-samples", "0"], "argument --num-samples: must be at least 1"),
    (["generate", "--out", "g", "--num-samples", "4", "--chunk-size", "-1"], "argument --chunk-size: must be at least 1"),
    (["generate", "--out", "g", "--num-samples", "4", "--guidance", "nan"], "argument --guidance: must be a finite"),
    (["demo", "--repeats", "0"], "argument --repeats: must be at least 1"),
]


@pytest.mark.parametrize("argv, message", BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_with_the_fix(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text("{}")
    assert message in refused(argv, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # nothing written


def test_missing_input_folders_are_refused_before_sampling(tmp_path, capsys):
    err = refused(sample_args(tmp_path / "out", "--steps", "2", "--vae", str(tmp_path / "no-vae")), capsys)
    assert f"argument --vae: {tmp_path / 'no-vae'} does not exist; give a local folder" in err
    err = refused(["sample", "--model", "pixart-tiny", "--embeddings", str(tmp_path / "e.safetensors")], capsys)
    assert "argument --embeddings:" in err and "does not exist; give an existing file" in err
    assert not (tmp_path / "out").exists()


def test_user_errors_exit_2_from_one_handler(capsys, tmp_path):
    """Errors found after parsing (here: a bad --option) print ``ditcache <command>: error:`` and return 2."""
    schedule = write_schedule(tmp_path, {"kind": "full", "steps": 2})
    code = main(["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", schedule, "--backend",
                 "eager", "--out", str(tmp_path / "eng"), "--option", "nokeyvalue", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ditcache export-engines: error: --option takes KEY=VALUE") and "Traceback" not in err
    assert not (tmp_path / "eng").exists()


def test_traceback_on_request(capsys, tmp_path, monkeypatch):
    """DITCACHE_TRACEBACK=1 lets the error through with its traceback (for bug reports)."""
    schedule = write_schedule(tmp_path, {"kind": "full", "steps": 2})
    monkeypatch.setenv("DITCACHE_TRACEBACK", "1")
    with pytest.raises(ValueError, match="--option takes KEY=VALUE"):
        main(["export-engines", "--model", "dit-tiny", "--random-weights", "--schedule", schedule, "--backend",
              "eager", "--out", str(tmp_path / "eng"), "--option", "nokeyvalue", "--quiet"])
