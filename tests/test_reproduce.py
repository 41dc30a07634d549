"""The CI check that a run reproduces the committed record (.ci/compare_lock.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "compare_lock.py"


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)],
                          capture_output=True, text=True, cwd=REPO)


def test_committed_lock_matches_itself(tmp_path: Path) -> None:
    done = compare(REPO / "dvc.lock", REPO / "dvc.lock")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "match the committed record" in done.stdout


def test_an_altered_output_hash_fails_and_is_named(tmp_path: Path) -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    out = lock["stages"]["train"]["outs"][0]
    out["md5"] = "0" * 32
    altered = tmp_path / "dvc.lock"
    altered.write_text(yaml.safe_dump(lock, sort_keys=False))
    done = compare(REPO / "dvc.lock", altered)
    assert done.returncode == 1
    assert f"train: outs: {out['path']}" in done.stdout
    assert "0" * 32 in done.stdout


def test_a_changed_param_or_missing_stage_fails(tmp_path: Path) -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    lock["stages"]["train"]["params"]["params.yaml"]["train"]["lr"] = 123.0
    del lock["stages"]["report"]
    altered = tmp_path / "dvc.lock"
    altered.write_text(yaml.safe_dump(lock, sort_keys=False))
    done = compare(REPO / "dvc.lock", altered)
    assert done.returncode == 1
    assert "train: params: params.yaml" in done.stdout
    assert "report: outs:" in done.stdout
