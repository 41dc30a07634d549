"""Shared helpers: tiny synthetic images and params built from the repo's params.yaml."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

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
