"""``ditcache generate``: sharding under torchrun, resumability, argument checks (ditcache/generate/).

Multi-rank runs go through ``python -m torch.distributed.run`` (gloo on CPU) in a subprocess, as a user
runs them; single-process runs go through ``main`` in-process (no process group)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ditcache.generate import SUMMARY_FILE, GenerateConfig
from ditcache.generate import generate as generate_run
from ditcache.benchmarks import eval_quality
from ditcache.compiler.runtime.seeds import sample_seed
from ditcache.generate.chunks import assign, chunk_range
from ditcache.generate.distributed import Dist
from ditcache.cli import build_parser, main
from ditcache.compiler.runtime.runner import eager_dispatcher, sample_with_plan
from ditcache.compiler.runtime.sampling import SampleRequest
from ditcache.graphs import get_spec, load_model
from ditcache.graphs.planning import plan_for
from ditcache.graphs.schedule import full_schedule

TINY = ["--model", "dit-tiny", "--random-weights", "--steps", "3", "--num-samples", "10", "--chunk-size", "4",
        "--quiet"]
FMNIST_N, FMNIST_B = 22, 4  # 6 chunks, the last one short


@pytest.fixture(scope="module")
def fmnist_weights(tmp_path_factory) -> str:
    """A pixel-space stand-in: the dit-fmnist architecture with random weights, saved as a diffusers folder."""
    model, _ = load_model(get_spec("dit-fmnist"), random_weights=True, seed=3)
    path = tmp_path_factory.mktemp("weights") / "fmnist"
    model.save_pretrained(path)
    return str(path)


def fmnist_args(weights: str) -> list[str]:
    return ["--model", "dit-fmnist", "--weights", weights, "--steps", "4", "--num-samples", str(FMNIST_N),
            "--chunk-size", str(FMNIST_B), "--guidance", "2", "--seed", "5", "--quiet"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(args: list[str], nproc: int | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``ditcache generate`` in a subprocess: under torchrun with ``nproc`` ranks, or as a plain process."""
    if nproc is None:
        command = [sys.executable, "-m", "ditcache", "generate", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "ditcache", "generate", *args]
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=180)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def generate(args: list[str]) -> dict:
    """In-process run (no process group); returns the summary."""
    assert main(["generate", *args, "--json"]) == 0
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / SUMMARY_FILE).read_text())


@pytest.fixture(scope="module")
def fmnist_reference(fmnist_weights, tmp_path_factory) -> Path:
    """The uninterrupted one-process run on the pixel model."""
    out = tmp_path_factory.mktemp("fmnist-ref")
    summary = generate([*fmnist_args(fmnist_weights), "--out", str(out)])
    assert summary["world_size"] == 1 and summary["chunks_computed"] == 6
    return Path(summary["output"])


# ---- (a) K ranks == 1 process, bit for bit --------------------------------------------------------------
def test_torchrun_two_ranks_write_the_same_npz_as_one_process(fmnist_weights, fmnist_reference, tmp_path):
    out = tmp_path / "two"
    done = cli([*fmnist_args(fmnist_weights), "--out", str(out), "--reference-throughput",
                str(fmnist_reference.parent / SUMMARY_FILE)], nproc=2)
    merged = out / fmnist_reference.name
    assert fmnist_reference.name == f"samples_{FMNIST_N}x28x28x1.npz"
    assert merged.read_bytes() == fmnist_reference.read_bytes()  # bit-identical file
    with np.load(merged) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (FMNIST_N, 28, 28, 1)
    assert labels.tolist() == [i % 10 for i in range(FMNIST_N)]  # balanced classes
    assert 0 < images.std()  # real images (of random weights), not a constant
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["world_size"] == 2 and [r["chunks"] for r in summary["ranks"]] == [3, 3]  # round-robin
    assert summary["scaling_efficiency"] is not None and summary["reference_source"].endswith("summary.json")
    assert "rank 0" in done.stdout and "rank 1" in done.stdout and "scaling efficiency" in done.stdout
    shard = np.load(out / "shards" / "chunk-000001.npz")
    assert json.loads(str(shard["meta"]))["rank"] == 1


def test_adaptive_schedule_two_ranks_equal_one_process(tmp_path):
    """Adaptive decisions are per chunk (the batch rule), and chunks do not depend on the number of processes: 2
    ranks write the bytes 1 process writes; the schedule really replays (the output differs from the full run)."""
    schedule = tmp_path / "adaptive.yaml"
    schedule.write_text("kind: adaptive\nsteps: 6\nsignal: first-block\nthreshold: 0.5\nwarmup: 1\nfinal: 1\n")
    args = ["--model", "dit-tiny", "--random-weights", "--num-samples", "6", "--chunk-size", "2", "--quiet"]
    one = generate([*args, "--schedule", str(schedule), "--out", str(tmp_path / "one")])
    cli([*args, "--schedule", str(schedule), "--out", str(tmp_path / "two")], nproc=2)
    full = generate([*args, "--steps", "6", "--out", str(tmp_path / "full")])
    name = Path(one["output"]).name
    assert (tmp_path / "two" / name).read_bytes() == Path(one["output"]).read_bytes()
    with np.load(one["output"]) as got, np.load(full["output"]) as want:
        assert np.abs(got["arr_0"] - want["arr_0"]).max() > 1e-3

# ---- (b) a killed run resumes, recomputing only what is missing ----------------------------------------
def test_killed_run_resumes_under_torchrun_and_matches(tmp_path):
    """dit-tiny (latent, no VAE: latents stored): killed after 1 chunk, resumed with 2 ranks."""
    ref = generate([*TINY, "--out", str(tmp_path / "ref")])
    out = tmp_path / "run"
    crashed = cli([*TINY, "--out", str(out), "--crash-after-chunks", "1"], check=False)
    assert crashed.returncode == 17, crashed.stderr
    shards = out / "shards"
    names = sorted(p.name for p in shards.iterdir())  # one finished shard, one half-written tmp file
    assert len(names) == 2 and names[0] == "chunk-000000.npz" and names[1].startswith("chunk-000001.npz.tmp-")
    assert not list(out.glob("latents_*.npz"))  # no merge after a crash
    done = cli([*TINY, "--out", str(out), "--json"], nproc=2)
    summary = json.loads(done.stdout)
    assert summary["chunks_reused"] == 1 and summary["computed"] == [1, 2]
    assert "removing half-written" in done.stderr
    assert Path(summary["output"]).read_bytes() == Path(ref["output"]).read_bytes()
    assert summary["output_kind"].startswith("latents") and Path(summary["output"]).name == "latents_10x4x8x8.npz"
    # and each sample is what SampleRequest(sample_seeds=...) gives for its chunk, whoever computed it
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    plan = plan_for(full_schedule(3), spec)
    request = SampleRequest((4, 5, 6, 7), 3, 4.0, 0, "ddim", sample_seeds=tuple(eval_quality.sample_seed(0, i)
                                                                                  for i in range(4, 8)))
    want = sample_with_plan(eager_dispatcher(model, spec, plan), spec, request).numpy()
    with np.load(summary["output"]) as data:
        np.testing.assert_array_equal(data["arr_0"][4:8], want)
        assert data["arr_1"].tolist() == list(range(10))


def test_corrupt_shards_and_tmp_files_are_recomputed(fmnist_weights, fmnist_reference, tmp_path):
    out = tmp_path / "run"
    crashed = cli([*fmnist_args(fmnist_weights), "--out", str(out), "--crash-after-chunks", "3"], check=False)
    assert crashed.returncode == 17, crashed.stderr
    shards = out / "shards"
    assert sorted(p.name for p in shards.glob("*.npz")) == [f"chunk-00000{c}.npz" for c in range(3)]
    # chunk 1: flipped bytes in the samples (zip still opens); chunk 2: truncated; chunk 4: another chunk's file
    data = bytearray((shards / "chunk-000001.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (shards / "chunk-000001.npz").write_bytes(bytes(data))
    (shards / "chunk-000002.npz").write_bytes((shards / "chunk-000002.npz").read_bytes()[:300])
    (shards / "chunk-000004.npz").write_bytes((shards / "chunk-000000.npz").read_bytes())
    (shards / "chunk-000005.npz.tmp-123").write_bytes(b"garbage")
    summary = generate([*fmnist_args(fmnist_weights), "--out", str(out)])
    assert summary["chunks_reused"] == 1 and summary["computed"] == [1, 2, 3, 4, 5]
    assert Path(summary["output"]).read_bytes() == fmnist_reference.read_bytes()
    assert not list(shards.glob("*.tmp-*"))
    # a re-run with everything in place computes nothing and writes the same file
    again = generate([*fmnist_args(fmnist_weights), "--out", str(out)])
    assert again["chunks_computed"] == 0 and again["chunks_reused"] == 6
    assert Path(again["output"]).read_bytes() == fmnist_reference.read_bytes()


def test_a_torchrun_rank_ends_without_teardown_and_keeps_its_output(tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) ``generate`` ends the rank with os._exit after flushing (gloo's teardown
    aborts finished jobs); a plain process and the other subcommands return normally."""
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    bad = ["generate", *TINY, "--out", str(tmp_path), "--classes", "1000"]  # fails after the model is loaded
    assert main(bad) == 2 and exits == []  # a plain process
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("ditcache.generate.job.setup_distributed", lambda device: Dist(device="cpu"))
    main(bad)
    assert exits == [2]
    main(["show-plan", "--model", "dit-tiny", "--steps", "4"])
    assert exits == [2]  # only generate joins a process group


def test_crash_flag_is_hidden():
    sub = build_parser()._subparsers._group_actions[0].choices["generate"]
    assert "crash" not in sub.format_help() and "--num-samples" in sub.format_help()


# ---- (c) other arguments in the same folder are refused ------------------------------------------------
def test_mismatched_arguments_are_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    generate([*TINY, "--out", out])
    capsys.readouterr()
    assert main(["generate", *TINY, "--out", out, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "seed: 0 -> 1" in err and "--overwrite" in err and "another --out" in err
    assert main(["generate", *TINY, "--out", out, "--num-samples", "12"]) == 2
    assert "num_samples: 10 -> 12" in capsys.readouterr().err
    summary = generate([*TINY, "--out", out, "--seed", "1", "--overwrite"])
    assert summary["chunks_computed"] == 3 and summary["chunks_reused"] == 0
    assert json.loads((Path(out) / "run.json").read_text())["args"]["seed"] == 1


def test_argument_errors(tmp_path, capsys):
    assert main(["generate", *TINY, "--out", str(tmp_path), "--classes", "1000"]) == 2
    assert "outside dit-tiny's classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, before any model is loaded
        main(["generate", *TINY[:-3], "--chunk-size", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "argument --chunk-size: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--chunk-size must be positive"):  # a GenerateConfig built in code
        generate_run(GenerateConfig(num_samples=4, out=str(tmp_path), chunk_size=0))


def test_class_list_cycles_and_chunk_padding_with_engines(tmp_path, capsys):
    """--engines: the chunk defaults to the engines' batch, any other runs too (the dispatcher splits it into the
    engines' batch and pads); the samples do not depend on the chunking."""
    from ditcache.export.export_engines import ExportRequest, export_engines

    schedule = tmp_path / "full.yaml"
    schedule.write_text("kind: full\nsteps: 3\n")
    export_engines(ExportRequest(model="dit-tiny", schedule=schedule, out=tmp_path / "eng", backend="eager",
                                 random_weights=True, batch_size=4), log=lambda m: None, progress=False)
    base = ["--engines", str(tmp_path / "eng"), "--num-samples", "6", "--classes", "7", "9", "--quiet"]
    three = generate([*base, "--chunk-size", "3", "--out", str(tmp_path / "x")])
    summary = generate([*base, "--out", str(tmp_path / "out")])
    eager = generate(["--model", "dit-tiny", "--random-weights", "--steps", "3", "--chunk-size", "4",
                      *base[2:], "--out", str(tmp_path / "eager")])
    with np.load(summary["output"]) as got, np.load(eager["output"]) as want:
        assert got["arr_0"].shape == (6, 4, 8, 8) and got["arr_1"].tolist() == [7, 9, 7, 9, 7, 9]
        np.testing.assert_array_equal(got["arr_1"], want["arr_1"])
        torch.testing.assert_close(torch.from_numpy(got["arr_0"][:4]), torch.from_numpy(want["arr_0"][:4]))
    with np.load(three["output"]) as split, np.load(summary["output"]) as whole:
        np.testing.assert_array_equal(split["arr_1"], whole["arr_1"])
        torch.testing.assert_close(torch.from_numpy(split["arr_0"]), torch.from_numpy(whole["arr_0"]),
                                   rtol=0, atol=3e-4)


# ---- pure helpers --------------------------------------------------------------------------------------
def test_seeds_chunks_and_assignment():
    seeds = [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**32 for s in seeds)
    assert sample_seed(0, 1) != sample_seed(1, 0)
    # one rule: the quality benchmarks' (numpy's SeedSequence of the pair), whose saved results it keeps valid
    assert eval_quality.sample_seed is sample_seed
    assert [sample_seed(5, i) for i in (0, 7)] == [int(np.random.SeedSequence([5, i]).generate_state(1)[0])
                                                   for i in (0, 7)]
    assert [chunk_range(c, 4, 10) for c in range(3)] == [range(0, 4), range(4, 8), range(8, 10)]
    chunks = list(range(7))
    shares = [assign(chunks, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]] and sorted(sum(shares, [])) == chunks


def test_generate_draws_the_noise_the_quality_benchmarks_draw(tmp_path):
    """Sample i of ``generate --seed 7`` starts from eval_quality's noise for (7, i): same images, any chunking."""
    summary = generate(["--model", "dit-tiny", "--random-weights", "--steps", "2", "--num-samples", "3",
                        "--chunk-size", "2", "--classes", "1", "2", "3", "--seed", "7", "--quiet",
                        "--out", str(tmp_path / "gen")])
    assert json.loads((tmp_path / "gen" / "run.json").read_text())["args"]["seed_rule"].startswith("SeedSequence")
    spec = get_spec("dit-tiny")
    model, _ = load_model(spec, random_weights=True)
    request = SampleRequest((1, 2, 3), 2, 4.0, 0, "ddim",
                            sample_seeds=tuple(eval_quality.sample_seed(7, i) for i in range(3)))
    want = sample_with_plan(eager_dispatcher(model, spec, plan_for(full_schedule(2), spec)), spec, request)
    with np.load(summary["output"]) as data:
        torch.testing.assert_close(torch.from_numpy(data["arr_0"]), want)  # one batch of 3 vs chunks of 2 + 1
