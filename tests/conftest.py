"""Shared helpers: tiny synthetic images and params built from the repo's params.yaml."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 200, 30)]


def repo_params(**overrides: Any) -> dict[str, Any]:
    """params.yaml of the repo with dotted overrides, e.g. ``**{"train.lr": 0.1}``."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


def class_image(label: int, index: int, size: int = 20) -> np.ndarray:
    """(size, size, 3) uint8: a class-coloured square at a per-index spot, with noise."""
    rng = np.random.default_rng(1000 * label + index)
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    y, x = rng.integers(0, size // 2, size=2)
    img[y:y + size // 2, x:x + size // 2] = COLOURS[label % len(COLOURS)]
    return img


def write_tree(root: Path, classes: int = 3, per_class: int = 10, size: int = 20,
               first: int = 0) -> Path:
    """A class-per-folder tree of PNGs: root/c<k>/img_<i>.png, i from ``first`` (trees
    with different ``first`` share no image)."""
    for label in range(classes):
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + per_class):
            Image.fromarray(class_image(label, i, size)).save(folder / f"img_{i:02d}.png")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 classes x 10 distinct PNG images."""
    return write_tree(tmp_path / "images")


PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "requirements.lock",
                 "data/review/decisions.csv")


def scratch_project(work: Path, *, files: tuple[str, ...] = PROJECT_FILES,
                    skip_dvc: tuple[str, ...] = ("cache", "tmp")) -> Path:
    """A copy of this project's code, .dvc folder (without ``skip_dvc``) and ``files`` in
    a new folder ``work``, for tests that run DVC on tiny data of their own."""
    work.mkdir()
    shutil.copytree(REPO / "pipeline", work / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", work / ".dvc", ignore=shutil.ignore_patterns(*skip_dvc))
    for name in files:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, work / name)
    return work


HALF_SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}  # split.fractions of a tiny project


def sh(*args: str, cwd: Path, stderr: bool = True) -> str:
    """Run a command in a scratch project (this venv's dvc and python, no telemetry, a git
    identity, no PYTHONPATH: the project's own copy of pipeline/); its stdout (+ stderr)."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + (done.stderr if stderr else "")


def tiny_project(work: Path, *, per_class: int, head_epochs: int = 1,
                 edit: Callable[[dict[str, Any]], None] = lambda params: None,
                 **scratch: Any) -> Path:
    """:func:`scratch_project` on 3 classes of ``per_class`` 24-px images, cached at 32 px,
    trained in batches of 8 for ``head_epochs`` head epochs and one all-layers epoch;
    ``edit`` changes params.yaml further. Committed to a new git repository."""
    scratch_project(work, **scratch)
    write_tree(work / "images", classes=3, per_class=per_class, size=24)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="images")
    params["cache"]["image_size"] = 32
    params["train"].update(batch_size=8, phases=[
        {"epochs": head_epochs, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 1, "unfreeze": "all", "lr_mult": 0.25}])
    edit(params)
    return commit_project(work, params)


def commit_project(work: Path, params: dict[str, Any]) -> Path:
    """Write ``params`` as the scratch project's params.yaml and commit the project to a
    new git repository."""
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=work)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "init", cwd=work)
    return work


@contextlib.contextmanager
def serving(model: Path, *args: str) -> Iterator[str]:
    """``python -m pipeline serve`` of ``model`` on a free port (CPU, extra ``args``); the
    server's URL once /health answers; the test fails with its stderr when it does not
    start within 90 s. Stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port",
         str(port), "--device", "cpu", *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail(f"server did not start: {process.stderr.read().decode()[-2000:]}")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def kill_mid_phase(proc: subprocess.Popen, checkpoint: Path, *, poll: float = 0.05) -> None:
    """SIGKILL a training process once its checkpoint stands inside phase 1 (after at least
    one of its epochs); the test fails if training ends first."""
    import torch

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            loop = torch.load(checkpoint, weights_only=True)["loop"]
            if loop["phase"] == 1 and loop["phase_epoch"] >= 1:  # mid-phase
                break
        time.sleep(poll)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def tree_hash(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path (a source left untouched
    hashes the same before and after)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def matches(text: str, pattern: str) -> bool:
    """``*`` in ``pattern`` matches anything and ``[0-9a-f]`` one hex digit; every other
    character only itself (messages hold brackets and question marks)."""
    regex = re.escape(pattern).replace(r"\*", ".*").replace(r"\[0\-9a\-f\]", "[0-9a-f]")
    return re.fullmatch(regex, text, flags=re.DOTALL) is not None


def fault_outcome(run: Callable[..., Any], *args: Any) -> str:
    """What a user reads: ``run(*args)``'s result, or its PipelineError's message."""
    from pipeline.core.errors import PipelineError

    try:
        return run(*args)
    except PipelineError as exc:
        return str(exc)
