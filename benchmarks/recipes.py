"""Benchmark: fine-tuning recipes with the same epoch budget on the cached demo.

    python benchmarks/recipes.py [--set train.layer_decay=0.9 ...] [--only staged]

Trains each recipe with the train stage's own code on the cache that ``dvc repro cache``
built (data/cache), then reports the test accuracy of its best checkpoint and the wall
time of training. Recipes: ``head`` (linear probe: the head alone for the whole budget),
``all`` (every layer from the start), ``staged`` (params.yaml's train.phases). Every
other setting comes from params.yaml, plus any ``--set section.key=value``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from common import load_params

from pipeline import paths
from pipeline.backbones import load_trained
from pipeline.cachefiles import open_split, read_meta
from pipeline.config import parse_sections
from pipeline.engine import predict
from pipeline.stages import train


def recipes(phases: list[dict]) -> dict[str, list[dict]]:
    """The three schedules, each over the default schedule's total epochs."""
    epochs = sum(p["epochs"] for p in phases)
    top_lr = max(p.get("lr_mult", 1.0) for p in phases)
    low_lr = min(p.get("lr_mult", 1.0) for p in phases)
    return {"head": [{"epochs": epochs, "unfreeze": "head", "lr_mult": top_lr}],
            "all": [{"epochs": epochs, "unfreeze": "all", "lr_mult": low_lr}],
            "staged": phases}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    params = load_params(args.set)
    test = open_split(paths.CACHE_DIR, read_meta(paths.CACHE_DIR), "test")
    rows = []
    for name, phases in recipes(params["train"]["phases"]).items():
        if args.only and name not in args.only:
            continue
        p = copy.deepcopy(params)
        p["train"]["phases"] = phases
        base, model_cfg, cfg = parse_sections(p, "base", "model", "train")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            start = time.perf_counter()
            metrics = train.run(base, model_cfg, cfg, paths.CACHE_DIR, out / "model.pt",
                                out / "train.json", out / "curves", out / "checkpoints")
            seconds = time.perf_counter() - start
            model, prep, _ = load_trained(out / "model.pt")
            model.to(memory_format=torch.channels_last)
            probs = predict(model, test, prep=prep, device=torch.device("cpu"),
                            batch_size=256)
        accuracy = float((probs.argmax(1) == test.labels).mean())
        rows.append((name, phases, metrics["best_val_accuracy"], accuracy, seconds))
    print(f"\n{'recipe':<8} {'val acc':>8} {'test acc':>9} {'train s':>8}  phases")
    for name, phases, val, accuracy, seconds in rows:
        print(f"{name:<8} {val:>8.4f} {accuracy:>9.4f} {seconds:>8.1f}  {phases}")


if __name__ == "__main__":
    main()
