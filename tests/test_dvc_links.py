"""Outputs DVC checked out as links into its cache are never written through (issue 26,
item 1), and a full disk leaves the previous outputs whole with one line (item 2)."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.core.errors import run_stage
from pipeline.core.files import atomic_dir, declared_outputs, detach_links

from .conftest import PROJECT_FILES, REPO, scratch_project, sh, write_tree


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cache_object(work: Path, digest: str) -> Path:
    return work / ".dvc/cache/files/md5" / digest[:2] / digest[2:]


def test_a_direct_stage_run_after_dvc_repro_leaves_the_cache_object_intact(tmp_path):
    work = scratch_project(tmp_path / "p", files=tuple(f for f in PROJECT_FILES
                                                        if f != ".gitignore"))
    write_tree(work / "images", classes=2, per_class=3, size=12)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="images")
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".dvc/config").write_text((work / ".dvc/config").read_text().replace(
        '"reflink,hardlink,symlink,copy"', '"hardlink"'))  # what DVC picks on ext4
    sh("git", "init", "-q", cwd=work)
    sh("dvc", "repro", "prepare", cwd=work)
    manifest = work / "data/prepared/manifest.csv"
    sh("dvc", "checkout", "--relink", "prepare", cwd=work)  # outputs become links into the cache
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    digest = lock["stages"]["prepare"]["outs"][0]["md5"]
    obj = cache_object(work, digest)
    assert manifest.stat().st_nlink == 2 and manifest.stat().st_ino == obj.stat().st_ino
    original = manifest.read_bytes()

    write_tree(work / "images", classes=2, per_class=2, size=12, first=10)  # new images
    env = dict(os.environ, PYTHONPATH=str(work))
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=work,
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert md5(obj) == digest  # the cached object still holds what its name says
    assert manifest.read_bytes() != original and manifest.stat().st_nlink == 1
    assert "output file(s) were links into DVC's cache" in done.stderr

    status = sh("dvc", "status", cwd=work)
    assert "changed deps" in status and "changed outs" in status  # DVC sees the change
    sh("dvc", "checkout", "--force", "prepare", cwd=work)  # recorded output, bit for bit
    assert manifest.read_bytes() == original and md5(manifest) == digest
    assert "changed outs" not in sh("dvc", "status", "prepare", cwd=work)


def test_detach_links_unlinks_only_linked_files_in_a_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "cached").write_text("cached")
    os.link(tmp_path / "cached", out / "hard.txt")
    os.symlink(tmp_path / "cached", out / "soft.txt")
    (out / "own.txt").write_text("own")
    detached = detach_links([out, tmp_path / "missing.csv"])
    assert sorted(p.name for p in detached) == ["hard.txt", "soft.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["own.txt"]
    assert (tmp_path / "cached").read_text() == "cached"


def test_declared_outputs_of_a_matrix_stage_fill_in_the_item():
    outs = declared_outputs("member", "3", REPO / "dvc.yaml")
    assert Path("models/seeds/3.pt") in outs and Path("metrics/seeds/3/train.json") in outs
    assert declared_outputs("no-such-stage", "", REPO / "dvc.yaml") == []
    assert Path("data/prepared/manifest.csv") in declared_outputs("prepare", "",
                                                                  REPO / "dvc.yaml")


def test_a_full_disk_inside_a_folder_output_keeps_the_old_folder(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "old.npy").write_bytes(b"old")
    with pytest.raises(OSError), atomic_dir(out) as partial:
        (partial / "new.npy").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert (out / "old.npy").read_bytes() == b"old"


def test_no_space_ends_a_stage_with_one_line_naming_the_folder(tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.chdir(tmp_path)

    def main() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.npy"))

    with pytest.raises(SystemExit) as stop:
        run_stage("cache", main, [])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"[cache] error: no space left on device (writing {tmp_path}/x.npy")
    assert "MiB free under" in err and "previous outputs are unchanged" in err


def test_the_cache_stage_checks_free_space_before_writing(tmp_path, monkeypatch):
    from pipeline.core.files import check_space

    monkeypatch.setattr("shutil.disk_usage", lambda _: SimpleNamespace(free=10 * 2**20))
    with pytest.raises(OSError) as err:
        check_space(tmp_path, 200 * 2**20, "the cache at 288 px")
    assert err.value.errno == errno.ENOSPC
    assert "the cache at 288 px needs 200 MiB under" in str(err.value)
    assert "10 MiB are free" in str(err.value)
