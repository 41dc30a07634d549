"""Benchmark: fine-tuning recipes on the cache of the current project.

    python benchmarks/recipes.py [--set train.layer_decay=0.9 ...] [--only staged ...]
        [--cache data/cache] [--smoke]

Trains each recipe with the train stage's own code on the cache that ``dvc repro cache``
built (data/cache: the demo, or any data set the project's params point at), then
prints a table: the best val accuracy, the test accuracy of the best checkpoint with its
95 % bootstrap interval, the epochs and the wall time of training. Recipes:

- ``head``: linear probe, the head alone for the default schedule's total epochs;
- ``all``: every layer from the start, same epochs, at the lowest lr_mult of the default;
- ``staged``: the default schedule (params.yaml's train.phases; ``auto`` resolved for
  the cache's data profile as the train stage does);
- ``gradual``: the default's head phases, then instead of its last phase ``unfreeze:
  gradual`` down to the same depth (one more group each epoch, ULMFiT's schedule), at
  the last phase's lr_mult; it takes at least the last phase's epochs, and one more
  than its steps (so ``all`` on EfficientNet-Lite0: 9 epochs, 8 steps + 1).

Every other setting comes from params.yaml, plus any ``--set section.key=value``.
``--smoke``: every recipe on a tiny cache made in a temporary folder, with timm's tiny
test model and a 1 + 1 epoch default schedule.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from common import add_smoke, load_params, smoke_params, tiny_cache

from pipeline.contracts.cachefiles import open_split, read_meta
from pipeline.contracts.modelfile import load_trained
from pipeline.core import paths
from pipeline.core.config import parse_sections
from pipeline.finetuning.backbones import create_model
from pipeline.finetuning.engine import predict
from pipeline.finetuning.finetune import AUTO_PHASES
from pipeline.finetuning.models import layer_groups
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.models import model_input
from pipeline.scoring.metrics import bootstrap_ci


def default_phases(params: dict, profile: str) -> list[dict]:
    """train.phases as plain data, ``auto`` replaced by the profile's schedule."""
    phases = params["train"]["phases"]
    if phases == "auto":
        phases = [{"epochs": p.epochs, "unfreeze": p.unfreeze, "lr_mult": p.lr_mult}
                  for p in AUTO_PHASES[profile]]
    return copy.deepcopy(phases)


def recipes(phases: list[dict], groups_below_head: int) -> dict[str, list[dict]]:
    """The four schedules (see the module docstring)."""
    epochs = sum(p["epochs"] for p in phases)
    top_lr = max(p.get("lr_mult", 1.0) for p in phases)
    low_lr = min(p.get("lr_mult", 1.0) for p in phases)
    *first, last = phases
    depth = last["unfreeze"]
    steps = groups_below_head if depth == "all" else int(depth)
    gradual = {"epochs": max(last["epochs"], steps + 1), "unfreeze": "gradual",
               "step_epochs": 1, "until": depth, "lr_mult": last.get("lr_mult", 1.0)}
    return {"head": [{"epochs": epochs, "unfreeze": "head", "lr_mult": top_lr}],
            "all": [{"epochs": epochs, "unfreeze": "all", "lr_mult": low_lr}],
            "staged": phases,
            "gradual": [*first, gradual]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--cache", type=Path, default=paths.CACHE_DIR)
    add_smoke(parser)
    args = parser.parse_args()
    if not args.smoke:
        compare(load_params(args.set), args.cache, args.only)
        return
    with tempfile.TemporaryDirectory() as tmp:
        compare(smoke_params(["train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}, "
                              "{epochs: 1, unfreeze: 2, lr_mult: 0.25}]", *args.set]),
                tiny_cache(Path(tmp)), args.only)


def compare(params: dict, cache_dir: Path, only: list[str]) -> None:
    """Train every recipe on the cache in ``cache_dir``; print the table."""
    meta = read_meta(cache_dir)
    test = open_split(cache_dir, meta, "test")
    base, model_cfg = parse_sections(params, "base", "model")
    model, _, _ = create_model(model_cfg, len(meta.classes), pretrained=False)
    rows = []
    for name, phases in recipes(default_phases(params, meta.profile),
                                len(layer_groups(model)) - 1).items():
        if only and name not in only:
            continue
        p = copy.deepcopy(params)
        p["train"]["phases"] = phases
        (cfg,) = parse_sections(p, "train")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            start = time.perf_counter()
            metrics = train_model(base, model_cfg, cfg, cache_dir, out / "model.pt",
                                  out / "train.json", out / "curves", out / "checkpoints")
            seconds = time.perf_counter() - start
            trained, prep, _ = load_trained(out / "model.pt")
            trained.to(memory_format=torch.channels_last)
            probs = predict(trained, test, device=torch.device("cpu"),
                            batch_size=256, inputs=model_input(trained, prep, "image"))
        correct = (probs.argmax(1) == test.labels).astype(float)
        low, high = bootstrap_ci(test.labels, correct, lambda _, v: float(v.mean()),
                                 n=1000, seed=base.seed)
        rows.append((name, phases, metrics["best_val_accuracy"], correct.mean(), low, high,
                     sum(ph["epochs"] for ph in phases), seconds))
        print(rows[-1], flush=True)
    print(f"\n{len(test.labels)} test images ({meta.profile} profile)\n")
    print("| recipe | best val accuracy | test accuracy [95 % CI] | epochs | train s | phases |")
    print("|---|---|---|---|---|---|")
    for name, phases, val, accuracy, low, high, epochs, seconds in rows:
        print(f"| {name} | {val:.4f} | {accuracy:.4f} [{low:.4f}, {high:.4f}] | {epochs} | "
              f"{seconds:.0f} | `{phases}` |")


if __name__ == "__main__":
    main()
