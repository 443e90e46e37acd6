"""Typed schedule configs: the same Schedule as the YAML file, one validator, files written with relative paths."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from ditcache.graphs import ScheduleError, get_spec, load_schedule, parse_schedule
from ditcache.graphs.configs import BlockCacheConfig, DeltaDiTConfig, FullConfig, config_from_file
from ditcache.graphs.planning import plan_for

ROOT = Path(__file__).resolve().parents[2]
CALIBRATED = ROOT / "schedules" / "fmnist-calibrated"


def test_a_config_is_its_yaml_mapping():
    config = DeltaDiTConfig(steps=20, interval=2, cached_blocks=8, boundary=12)
    assert config.to_mapping() == {"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 8,
                                   "boundary": 12, "cache": "offset"}
    schedule = parse_schedule(config.to_mapping())
    assert config.to_schedule().to_dict() == schedule.to_dict()
    assert FullConfig(steps=5).to_schedule().to_dict() == {"kind": "full", "steps": 5}
    table = BlockCacheConfig(steps=4, recompute={2: (0, 3)}, cache="output")
    assert table.to_schedule().recompute == {2: [0, 3]} and table.to_schedule().cache == "output"


@pytest.mark.parametrize("make, data", [
    (lambda: DeltaDiTConfig(steps=20), {"kind": "delta-dit", "steps": 20}),
    (lambda: DeltaDiTConfig(steps=20, interval=2, cached_blocks=4, cache="delta"),
     {"kind": "delta-dit", "steps": 20, "interval": 2, "cached_blocks": 4, "cache": "delta"}),
    (lambda: BlockCacheConfig(steps=5, recompute={1: [1, 2]}), {"kind": "block-cache", "steps": 5,
                                                               "recompute": {1: [1, 2]}}),
    (lambda: FullConfig(steps=0), {"kind": "full", "steps": 0}),
])
def test_bad_values_fail_at_construction_with_the_validators_message(make, data):
    with pytest.raises(ScheduleError) as from_yaml:
        parse_schedule(data, source="X")
    with pytest.raises(ScheduleError) as from_config:
        make()
    assert str(from_config.value).split(": ", 1)[1] == str(from_yaml.value).split(": ", 1)[1]


def test_from_file_gives_the_files_schedule_from_any_folder(tmp_path, monkeypatch):
    path = CALIBRATED / "blockcache-1.8x-closed-form.yaml"
    config = BlockCacheConfig.from_file(path)
    assert config.curves == CALIBRATED / "curves.json" and config.scale_shift.name.endswith("closed-form.safetensors")
    monkeypatch.chdir(tmp_path)  # resolved when made: the working directory no longer matters
    assert config.to_schedule().to_dict() == load_schedule(path).to_dict()
    assert config.to_schedule().corrections == load_schedule(path).corrections
    delta = config_from_file(CALIBRATED / "delta-auto-N2-Nc8.yaml")
    assert isinstance(delta, DeltaDiTConfig) and delta.boundary == "auto"
    assert plan_for(delta.to_schedule(), get_spec("dit-fmnist")).hash() == \
        plan_for(load_schedule(CALIBRATED / "delta-auto-N2-Nc8.yaml"), get_spec("dit-fmnist")).hash()
    with pytest.raises(ScheduleError, match="a block-cache schedule, not delta-dit; load it with BlockCacheConfig"):
        DeltaDiTConfig.from_file(path)


def test_to_yaml_writes_paths_relative_to_the_file(tmp_path):
    config = BlockCacheConfig.from_file(CALIBRATED / "blockcache-1.8x-closed-form.yaml")
    target = tmp_path / "deep" / "s.yaml"
    target.parent.mkdir()
    text = config.to_yaml(target, header="# copy\n")
    import yaml

    written = yaml.safe_load(text)
    assert text.startswith("# copy\n") and str(tmp_path) not in text
    assert not written["curves"].startswith("/") and not written["scale_shift"].startswith("/")
    target.write_text(text)
    assert load_schedule(target).to_dict() == load_schedule(CALIBRATED / "blockcache-1.8x-closed-form.yaml").to_dict()
    moved = tmp_path / "moved"  # the schedule and its files move together: still valid
    (moved / "deep").mkdir(parents=True)
    for name in ("curves.json", "scale-shift-1.8x-closed-form.safetensors"):
        shutil.copy(CALIBRATED / name, moved / "deep" / name)
    (moved / "deep" / "s.yaml").write_text(config.to_yaml(CALIBRATED / "s.yaml"))
    assert load_schedule(moved / "deep" / "s.yaml").to_dict() == load_schedule(target).to_dict()


def test_configs_are_exported_lazily_from_ditcache():
    import subprocess

    code = ("import sys, ditcache; assert 'ditcache.graphs' not in sys.modules; "
            "c = ditcache.DeltaDiTConfig(steps=4, interval=2, cached_blocks=1); "
            "assert type(c).__module__ == 'ditcache.graphs.configs'; "
            "assert {'BlockCacheConfig', 'DeltaDiTConfig', 'FullConfig'} <= set(dir(ditcache)); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
