"""Helpers only the benchmarks use, kept out of the pipeline package so that editing
them reruns no DVC stage. Scripts run as ``python benchmarks/<name>.py`` import this as
``common``; tests as ``benchmarks.common``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from pipeline.core.config import PARAMS_FILE, parse_sections
from pipeline.core.errors import ParamsError
from pipeline.dataquality.quality import out_of_fold_probabilities


def load_params(overrides: Sequence[str] = (), *, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as plain data with ``section.key=value`` overrides (values read as
    YAML, as ``dvc exp run -S`` does), for benchmarks and scripts; validate the result
    with :func:`parse_sections`. An override of a key params.yaml lacks is an error."""
    return apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides)


def apply_overrides(params: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``params`` changed in place by ``section.key=value`` overrides (see
    :func:`load_params`); returns it."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        node: Any = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"override {item!r}: give section.key=value with a key that "
                              f"params.yaml has")
        node[leaf] = yaml.safe_load(value)
    return params


def probe_accuracy(embeddings: np.ndarray, labels: Sequence[str], *, folds: int, seed: int,
                   probe: str, dims: int) -> float:
    """Out-of-fold accuracy of the label check's linear probe: how well it can judge labels."""
    _, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    probs = out_of_fold_probabilities(embeddings, y, folds=folds, seed=seed, probe=probe,
                                      dims=dims)
    return float((probs.argmax(1) == y).mean())


# ----------------------------------------------------------------------------- smoke runs
# Every benchmark takes ``--smoke``: its whole code path in a few seconds on tiny data it
# makes itself (no shared data sets, no pretrained weights), printing its table as usual.
# The numbers mean nothing; tests/test_benchmarks_smoke.py runs each one so that none rots.

REPO = Path(__file__).resolve().parents[1]
SMOKE_HELP = ("run the whole code path in seconds on tiny data made here (a check that the "
              "benchmark runs; its numbers mean nothing)")
TINY_MODEL = "timm:test_efficientnet"  # timm's test model: 0.2 M parameters, random weights
# params.yaml overrides (dvc exp run -S syntax) that make every stage tiny
TINY_PARAMS = (
    f"model.name={TINY_MODEL}", "model.weights=none",
    f"embed.model={TINY_MODEL}", "embed.weights=none", "embed.image_size=32",
    "embed.calibration_sample=12",
    "cache.image_size=32",
    # a smoke run checks that a benchmark runs, not clean's gates: a random-weight tiny
    # backbone's label issues and outliers are noise (imbalance's: 7 of 48 images flagged)
    "clean.max_rate.label_issue=1.0", "clean.max_rate.outlier=1.0",
    "train.batch_size=8", "train.hflip=false",
    "train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}, "
    "{epochs: 1, unfreeze: all, lr_mult: 0.25}]",
)
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220), (230, 200, 30)]


def add_smoke(parser: argparse.ArgumentParser) -> None:
    """Give a benchmark's parser the ``--smoke`` flag."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def smoke_params(overrides: Sequence[str] = (), *, path: Path = REPO / "params.yaml"
                 ) -> dict[str, Any]:
    """:func:`load_params` of this checkout's params.yaml (a smoke run works in a scratch
    folder) with :data:`TINY_PARAMS` before ``overrides``."""
    return load_params([*TINY_PARAMS, *overrides], path=path)


def tiny_image(label: int, index: int, size: int = 24) -> np.ndarray:
    """(size, size, 3) uint8: a class-coloured square at a per-index spot, with noise."""
    rng = np.random.default_rng(1000 * label + index)
    img = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    y, x = rng.integers(0, size // 2, size=2)
    img[y:y + size // 2, x:x + size // 2] = COLOURS[label % len(COLOURS)]
    return img


def tiny_images(classes: int = 3, per_class: int = 8, size: int = 24
                ) -> tuple[list[np.ndarray], list[int]]:
    """``classes`` x ``per_class`` distinct :func:`tiny_image` s and their labels."""
    pairs = [(c, i) for c in range(classes) for i in range(per_class)]
    return [tiny_image(c, i, size) for c, i in pairs], [c for c, _ in pairs]


def write_tree(root: Path, *, classes: Sequence[str] = ("c0", "c1", "c2"), per_class: int = 8,
               size: int = 24, splits: Sequence[str] = (), suffix: str = ".png") -> Path:
    """A class-per-folder tree of :func:`tiny_image` files, ``root/<class>/<i>.png``, or
    ``root/<split>/<class>/<i>.png`` with ``per_class`` images per class in each split."""
    for s, split in enumerate(splits or [""]):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                index = 100 * s + i
                Image.fromarray(tiny_image(label, index, size)).save(
                    folder / f"img_{index:03d}{suffix}")
    return root


def tiny_cache(work: Path, *, classes: int = 3, per_class: int = 8, size: int = 32) -> Path:
    """A cache stage's output in ``work/cache``: ``per_class`` images of each of
    ``classes`` classes in each of train, val and test, stored at ``size`` px by the
    cache stage's own writer. Returns the cache folder."""
    from pipeline.contracts import sources
    from pipeline.modality.image import cache as image_cache

    root = write_tree(work / "images", classes=[f"c{k}" for k in range(classes)],
                      per_class=per_class, size=size, splits=("train", "val", "test"))
    df = sources.assign_ids(sources.list_folder(root), root)
    params = smoke_params([f"cache.image_size={size}"])
    (cfg,) = parse_sections(params, "cache")
    names = sorted(set(df["label"]))
    out = work / "cache"
    out.mkdir(parents=True)
    image_cache.write_cache(df, root, out, cfg, size, f"{size} px (smoke)", "photo",
                      {name: i for i, name in enumerate(names)})
    return out


def tiny_model(work: Path, cache_dir: Path | None = None) -> Path:
    """``work/model.pt``: the tiny model trained one head epoch by the train stage's own
    code on ``cache_dir`` (default: a :func:`tiny_cache` in ``work``)."""
    from pipeline.finetuning.trainrun import train_model

    cache_dir = cache_dir or tiny_cache(work)
    base, model_cfg, cfg = parse_sections(
        smoke_params(["train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}]"]),
        "base", "model", "train")
    train_model(base, model_cfg, cfg, cache_dir, work / "model.pt", work / "train.json",
                work / "curves", work / "checkpoints")
    return work / "model.pt"
