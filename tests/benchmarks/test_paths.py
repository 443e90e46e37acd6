"""Saved results name files relative to the repository."""

import json

from ditcache.benchmarks.paths import REPO_ROOT, repo_relative


def test_repo_paths_become_relative_and_json_stays_valid():
    record = {"schedule": str(REPO_ROOT / "schedules" / "x.yaml"), "cwd": str(REPO_ROOT), "other": "/opt/data"}
    text = repo_relative(json.dumps(record))
    assert json.loads(text) == {"schedule": "schedules/x.yaml", "cwd": ".", "other": "/opt/data"}
    assert str(REPO_ROOT) not in repo_relative(f"python {REPO_ROOT}/benchmarks/run.py --out {REPO_ROOT}")
