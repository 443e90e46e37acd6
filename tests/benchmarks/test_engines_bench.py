"""The engines benchmark end to end on dit-tiny (benchmarks/configs/engines-tiny.yaml): correctness of the
measurements and the result files, not the numbers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from ditcache.benchmarks.bench_config import ConfigError
from ditcache.benchmarks.engines_bench import (HEADER, directory_bytes, engine_kind, load_engines_config, main,
                                               shorter_schedule)
from ditcache.graphs.registry import get_spec

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "benchmarks" / "configs" / "engines-tiny.yaml"
CPU = REPO / "benchmarks" / "configs" / "engines-cpu.yaml"


def _md_cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip()[1:-1].split(" | ")]


def _tiny_config(root: Path) -> tuple[Path, object]:
    """engines-tiny.yaml with the tiny model's random weights written here (saves the weights process)."""
    from safetensors.torch import save_file

    from ditcache.graphs.weights import load_model

    model, _ = load_model(get_spec("dit-tiny"), random_weights=True, seed=0)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith("pos_embed.pos_embed")}
    weights = root / "dit-tiny.safetensors"
    save_file(state, str(weights))
    data = yaml.safe_load(TINY.read_text())
    entry = data["models"][0]
    entry.pop("random_weights")
    entry["weights"] = str(weights)
    config = root / "engines-tiny.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, model


def _run(root: Path, backends: list[str]):
    config, model = _tiny_config(root)
    out = root / "out"
    code = main(["--config", str(config), "--out", str(out), "--cache-dir", str(root / "cache"), "--backends",
                 *backends, "--quiet"])
    return code, out, model


def _rerun(out: Path, *extra: str) -> dict:
    root = out.parent
    assert main(["--config", str(root / "engines-tiny.yaml"), "--out", str(out), "--cache-dir", str(root / "cache"),
                 "--quiet", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("engines"), ["eager", "onnxruntime"])


def _plan():
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.schedule import parse_schedule

    entry = yaml.safe_load(TINY.read_text())["models"][0]
    return plan_for(parse_schedule(entry["schedule"]), get_spec("dit-tiny"))


def _check_row(row: dict, model, repeats: int) -> None:
    """Every measured field of an ok row is filled and plausible."""
    plan = _plan()
    assert row["status"] == "ok", row["status"]
    assert row["cold_start_s"] > 0 and row["load_s"] > 0 and row["first_run_s"] > 0 and row["import_s"] > 0
    # the parent's clock from starting the process to the first latents covers the child's own phases
    assert row["cold_start_s"] >= row["python_start_s"] + row["import_s"] + row["load_s"] + row["first_run_s"] - 0.01
    assert row["cold_start_s"] < row["row_wall_s"]
    assert row["startup_overhead_s"] == pytest.approx(row["cold_start_s"] - statistics.median(row["runs_s"]))
    assert 0 < row["rss_imported_bytes"] <= row["rss_loaded_bytes"] <= row["peak_rss_bytes"]
    # VmHWM, the process's own peak; ru_maxrss also counts the parent's pages between fork and exec
    # (the kernel's per-CPU RSS counters make the two readings differ by a few pages either way)
    assert row["peak_rss_source"] == "VmHWM" and row["peak_rss_bytes"] <= 1.01 * row["ru_maxrss_bytes"]
    params = sum(p.numel() for p in model.parameters())
    assert row["param_count"] == params and row["weights_bytes"] == 4 * params  # fp32
    assert row["peak_over_weights"] == pytest.approx(row["peak_rss_bytes"] / row["weights_bytes"])
    assert row["variants_loaded"] == sorted(v.name for v in plan.variants)
    assert set(row["per_step_ms"]) == {v.name for v in plan.variants}
    for variant in plan.variants:
        timing = row["per_step_ms"][variant.name]
        assert timing["count"] == len(plan.steps_of(variant)) * repeats, variant.name
        assert 0 < timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert len(row["runs_s"]) == repeats


@pytest.mark.e2e
def test_engines_bench_end_to_end(tiny_run):
    code, out, model = tiny_run
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert document["complete"] and document["command"].startswith("python -m ditcache.benchmarks.engines_bench")
    assert {"cpu", "cores", "versions", "date_utc"} <= set(document["machine"])
    assert not list(out.glob("*.tmp*"))
    rows = {r["backend"]: r for r in document["rows"]}
    assert set(rows) == {"eager", "onnxruntime"}
    repeats = yaml.safe_load(TINY.read_text())["repeats"]
    for row in rows.values():
        _check_row(row, model, repeats)

    eager, ort = rows["eager"], rows["onnxruntime"]
    assert eager["engines"] == "eager" and eager["export_s"] is None and eager.get("disk_bytes") is None
    assert ort["engines"] == "artifacts" and ort["export_s"] > 0
    size, count = directory_bytes(Path(ort["engines_dir"]))
    assert (ort["disk_bytes"], ort["disk_files"]) == (size, count) and count > 1
    assert ort["disk_bytes"] >= ort["weights_bytes"]  # the weights are in the directory at least once
    assert ort["max_abs_vs_eager"] < 1e-3 and ort["cosine_vs_eager"] > 0.9999  # ORT computes what eager does
    # one export serves batch 3 too (batch_check [1, 3]; 1 is the row itself); per-image seeds: image 0 of the
    # batch-3 run is the row's image
    assert [b["images"] for b in ort["batch"]] == [3] and eager["batch"] == []
    batch = ort["batch"][0]
    assert batch["status"] == "ok", batch["status"]
    assert batch["shape"][0] == 3 and batch["image0_max_abs_vs_row"] < 1e-5 and batch["run_s"] > 0
    assert set(batch["per_step_ms"]) == set(ort["per_step_ms"])

    lines = (out / "results.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert _md_cells(table[0]) == list(HEADER)
    for line in table[1:]:
        cells = dict(zip(HEADER, _md_cells(line)))
        assert cells["status"] == "ok"
        for column in ("cold start s (import + load + 1st run; cold start - warm run)", "per-step ms by variant",
                       "run s", "peak RSS GiB (above imports)", "weights GiB"):
            assert cells[column] not in ("", "–"), (cells["backend"], column)
    assert "python -m ditcache.benchmarks.engines_bench" in "\n".join(lines)


@pytest.mark.e2e
def test_resume_keeps_what_was_measured(tiny_run):
    """--resume keeps rows measured with the same settings and the rows not selected; --again re-measures."""
    _, out, _ = tiny_run
    before = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    kept = _rerun(out, "--backends", "eager", "--resume")
    rows = {r["id"]: r for r in kept["rows"]}
    assert list(rows) == ["dit-tiny/eager", "dit-tiny/onnxruntime"]  # the config's order, the other row kept
    for row_id in rows:
        assert rows[row_id]["cold_start_s"] == before[row_id]["cold_start_s"]
    assert any("earlier call" in n for n in rows["dit-tiny/eager"]["notes"])
    assert any("not selected" in n for n in rows["dit-tiny/onnxruntime"]["notes"])
    assert len(kept["earlier_calls"]) == 1
    again = {r["id"]: r for r in _rerun(out, "--backends", "eager", "--resume", "--again")["rows"]}
    assert again["dit-tiny/eager"]["cold_start_s"] != before["dit-tiny/eager"]["cold_start_s"]  # measured anew
    assert again["dit-tiny/onnxruntime"]["cold_start_s"] == before["dit-tiny/onnxruntime"]["cold_start_s"]


@pytest.mark.slow
def test_engines_bench_aot(tmp_path):
    """The AOTInductor row: packages on disk, loaded in a fresh process without compiling (minutes)."""
    if engine_kind("inductor") != "artifacts":
        pytest.skip("the inductor backend writes no artifacts in this checkout (AOT packages not built yet)")
    code, out, model = _run(tmp_path, ["eager", "inductor"])
    assert code == 0
    rows = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    aot = rows["inductor"]
    _check_row(aot, model, yaml.safe_load(TINY.read_text())["repeats"])
    assert aot["export_s"] > 0 and (aot["disk_bytes"], aot["disk_files"]) == directory_bytes(Path(aot["engines_dir"]))
    assert aot["max_abs_vs_eager"] < 1e-3


def test_shorter_schedule_keeps_the_variants():
    from ditcache.graphs.planning import plan_for
    from ditcache.graphs.schedule import parse_schedule

    spec = get_spec("dit-xl")
    original = yaml.safe_load((REPO / "schedules" / "dit-xl-delta-20.yaml").read_text())
    short = shorter_schedule(original, 6, spec)
    assert short["steps"] == 6 and short["boundary"] != original["boundary"]
    names = [{v.name for v in plan_for(parse_schedule(d), spec).variants} for d in (original, short)]
    assert names[0] == names[1]
    assert shorter_schedule({"kind": "full", "steps": 20}, 5, spec) == {"kind": "full", "steps": 5}
    with pytest.raises(ConfigError, match="--steps"):
        shorter_schedule(original, 1, spec)
    with pytest.raises(ConfigError, match="block-cache"):
        shorter_schedule({"kind": "block-cache", "steps": 20, "recompute": {1: [0]}}, 6, spec)


def test_shipped_config_rows():
    cfg = load_engines_config(CPU)
    assert [m.model for m in cfg.models] == ["dit-fmnist", "dit-xl"]
    for entry in cfg.models:
        assert sorted(r.backend for r in entry.rows) == ["eager", "inductor", "inductor-jit", "onnxruntime"]
        assert all(r.granularity == "variant" and r.precision == "fp32" for r in entry.rows)
    fmnist, xl = cfg.models
    assert fmnist.batch_check == (1, 16) and xl.batch_check == (1, 4)
    assert xl.rows[0].steps == 6 and "shortened" in xl.schedule_note
    only = load_engines_config(CPU, models=["dit-fmnist"], backends=["eager"], steps=10, repeats=1)
    assert [(m.model, [(r.backend, r.steps, r.repeats) for r in m.rows]) for m in only.models] == [
        ("dit-fmnist", [("eager", 10, 1)])]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="dit-nope"):
        load_engines_config(CPU, models=["dit-nope"])
    bad = yaml.safe_load(TINY.read_text())
    bad["models"][0]["shedule"] = bad["models"][0].pop("schedule")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="schedule"):
        load_engines_config(path)
    bad = yaml.safe_load(TINY.read_text())
    bad["batch_check"] = [0, 4]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="batch_check"):
        load_engines_config(path)
    assert main(["--config", str(CPU), "--models", "dit-nope"]) == 2
