"""Benchmark: class imbalance settings on the demo digits with classes 0-4 cut to 10 %.

    python benchmarks/imbalance.py [--epochs N] [--keep 0.1] [--set section.key=value ...]
        [--smoke]

Builds the demo's cache once in a temporary folder with the stages' own ``run``
functions (demo, prepare, embed, clean, split, cache), dropping all but ``--keep`` of
the train images of classes 0-4 between split and cache (val and test untouched). Then
trains with each train.class_weights x train.sampler setting and prints macro-F1 and
balanced accuracy (95 % bootstrap intervals) of the best checkpoint on the test split.
``--epochs N`` replaces the schedule by 1 head epoch and N - 1 epochs of the whole
network (the demo's own schedule shape, shorter), for slow machines.

``--smoke``: instead of the digits, 4 classes ("0", "1", "5", "6") of 12 tiny images
each, half of the train images of "0" and "1" kept, timm's tiny test model, one head
epoch, 100 bootstrap resamples: every step in seconds.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import add_smoke, load_params, smoke_params, write_tree
from sklearn.metrics import balanced_accuracy_score, f1_score

from pipeline.contracts.cachefiles import open_split, read_meta
from pipeline.contracts.manifest import read_manifest, write_manifest
from pipeline.contracts.modelfile import load_trained
from pipeline.core import paths
from pipeline.core.config import parse_sections
from pipeline.finetuning.engine import predict
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.models import model_input
from pipeline.scoring.metrics import bootstrap_ci
from pipeline.stages import cache, clean, demo, embed, prepare, split

SETTINGS = [("none", "shuffle"), ("balanced", "shuffle"), ("none", "balanced"),
            ("balanced", "balanced")]


def build_cache(params: dict, keep: float) -> tuple[int, ...]:
    """The stages from demo (unless params.yaml names other data) to cache in the current
    folder, with classes 0-4 of the train split cut to ``keep``; returns the train count
    per class."""
    base, data, embed_cfg, clean_cfg, split_cfg, cache_cfg = parse_sections(
        params, "base", "data", "embed", "clean", "split", "cache")
    if data.source == "demo":
        demo.run(paths.DEMO_ROOT, paths.DEMO_MANIFEST)
    prepare.run(data, paths.PREPARED)
    embed.run(data, embed_cfg, paths.PREPARED, paths.EMBED_DIR, device=base.device)
    clean.run(data, clean_cfg, paths.PREPARED, paths.EMBED_DIR, paths.CLEAN,
              paths.METRICS_DIR / "clean.json")
    split.run(base, data, split_cfg, paths.CLEAN, paths.EMBED_DIR, paths.SPLIT,
              paths.METRICS_DIR / "split.json")
    df = read_manifest(paths.SPLIT)
    rng = np.random.default_rng(0)
    minority = (df["split"] == "train") & df["label"].astype(str).isin(list("01234"))
    drop = minority & (rng.random(len(df)) >= keep)
    write_manifest(df[~drop].reset_index(drop=True), paths.SPLIT)
    cache.run(data, cache_cfg, paths.SPLIT, paths.CACHE_DIR)
    meta = read_meta(paths.CACHE_DIR)
    train_labels = open_split(paths.CACHE_DIR, meta, "train").labels
    return tuple(np.bincount(train_labels, minlength=len(meta.classes)).tolist())


def evaluate(model_path: Path, test, *, resamples: int = 1000
             ) -> dict[str, tuple[float, float, float]]:
    """Macro-F1 and balanced accuracy on the test split, each (value, low, high) with
    a bootstrap of ``resamples``."""
    model, prep, _ = load_trained(model_path)
    model.to(memory_format=torch.channels_last)
    preds = predict(model, test, device=torch.device("cpu"),
                    batch_size=256, inputs=model_input(model, prep, "image")).argmax(1)
    out = {}
    for name, metric in (("macro_f1", lambda y, p: f1_score(y, p, average="macro")),
                         ("balanced_accuracy", balanced_accuracy_score)):
        low, high = bootstrap_ci(test.labels, preds, metric, n=resamples, seed=0)
        out[name] = (float(metric(test.labels, preds)), low, high)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=0)
    add_smoke(parser)
    args = parser.parse_args()
    params = (smoke_params(["data.source=folder", "data.root=images",
                            "train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}]",
                            *args.set])
              if args.smoke else load_params(args.set))
    if args.smoke:
        args.keep = 0.5
    if args.epochs:
        params["train"]["phases"] = [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
                                     {"epochs": args.epochs - 1, "unfreeze": "all",
                                      "lr_mult": 0.25}]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the stages' relative paths (data/...) land here
        if args.smoke:
            write_tree(Path("images"), classes=("0", "1", "5", "6"), per_class=12)
        counts = build_cache(params, args.keep)
        print(f"train images per class: {counts}")
        test = open_split(paths.CACHE_DIR, read_meta(paths.CACHE_DIR), "test")
        for weights, sampler in SETTINGS:
            p = copy.deepcopy(params)
            p["train"].update(class_weights=weights, sampler=sampler)
            base, model_cfg, cfg = parse_sections(p, "base", "model", "train")
            out = Path(tmp) / f"{weights}_{sampler}"
            start = time.perf_counter()
            train_model(base, model_cfg, cfg, paths.CACHE_DIR, out / "model.pt",
                        out / "train.json", out / "curves", out / "checkpoints")
            rows.append((weights, sampler, evaluate(out / "model.pt", test,
                                                    resamples=100 if args.smoke else 1000),
                         time.perf_counter() - start))
    print(f"\ntest split: {len(test.labels)} images, train per class {counts}")
    print(f"{'class_weights':<14}{'sampler':<10}{'macro-F1 [95% CI]':<26}"
          f"{'balanced acc [95% CI]':<26}{'train s':>8}")
    for weights, sampler, scores, seconds in rows:
        cells = "".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]".ljust(26) for v, lo, hi in
                        (scores["macro_f1"], scores["balanced_accuracy"]))
        print(f"{weights:<14}{sampler:<10}{cells}{seconds:>8.1f}")


if __name__ == "__main__":
    main()
