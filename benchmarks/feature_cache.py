"""Benchmark: a head-only epoch on stored backbone features vs. one through the backbone.

    python benchmarks/feature_cache.py [--epochs 3] [--cache data/cache] [--smoke]

Uses the demo cache (``dvc repro cache`` first) and params.yaml's model and train
settings (``--smoke``: a tiny cache made in a temporary folder and timm's tiny test
model, 2 epochs). Times, with the train stage's own parts
(pipeline.finetuning.training: build_setup, start_phase, run_epoch): computing the
features once, head-only epochs on them, and head-only epochs that run the frozen
backbone forward every batch (train.feature_cache: false). Prints the median epoch
times, their ratio, and how far apart the two heads end up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch
import yaml
from common import add_smoke, smoke_params, tiny_cache

from pipeline.contracts.cachefiles import open_split, read_meta
from pipeline.core import paths
from pipeline.core.config import parse_sections
from pipeline.finetuning.training import (
    Checkpointer,
    LoopState,
    Run,
    build_setup,
    epoch_batches,
    run_epoch,
    start_phase,
)
from pipeline.params.train import Phase


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=paths.CACHE_DIR)
    add_smoke(parser)
    args = parser.parse_args()
    if not args.smoke:
        measure(yaml.safe_load(Path("params.yaml").read_text()), args.cache, args.epochs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        measure(smoke_params(), tiny_cache(Path(tmp)), 2)


def measure(params: dict, cache_dir: Path, epochs: int) -> None:
    """Time both modes on the cache in ``cache_dir``; print the comparison."""
    model_cfg, cfg = parse_sections(params, "model", "train")
    # one head-only phase at a constant lr, nothing that changes inputs every epoch
    cfg = dataclasses.replace(
        cfg, hflip=False, shift=0, mixup=0.0, cutmix=0.0, ema_decay=0.0, compile=False,
        patience=0, phases=(Phase(epochs=epochs, unfreeze="head",
                                  lr_mult=cfg.phases[0].lr_mult, schedule="constant"),))
    meta = read_meta(cache_dir)
    data, val = open_split(cache_dir, meta, "train"), open_split(cache_dir, meta, "val")
    cpu = torch.device("cpu")
    results, heads = {}, {}
    for mode in ("backbone", "features"):
        mode_cfg = dataclasses.replace(cfg, feature_cache=mode == "features")
        torch.manual_seed(0)  # the same new head in both modes
        setup = build_setup(model_cfg, mode_cfg, len(meta.classes), cpu, verbose=False)
        run = Run(mode_cfg, setup, [data], val, cpu, torch.Generator().manual_seed(0),
                  torch.Generator().manual_seed(1), Checkpointer(Path(tempfile.gettempdir()), []),
                  log=lambda record: None)
        loop = LoopState()
        phase = start_phase(run, loop, None)
        _, extract = epoch_batches(run, phase, data, 0)  # stores the features (features mode)
        torch.manual_seed(1)  # the same dropout masks in both modes
        times = []
        for _ in range(epochs):
            before = loop.timing.get("phase0_seconds", 0.0)
            run_epoch(run, loop, phase)  # the train stage's own epoch (validation untimed)
            times.append(loop.timing["phase0_seconds"] - before)
        results[mode] = (statistics.median(times), extract)
        heads[mode] = setup.head.state_dict()
    full, fast = results["backbone"][0], results["features"][0]
    diff = max(float((heads["backbone"][k] - heads["features"][k]).abs().max())
               for k in heads["backbone"])
    print(f"{len(data.labels)} train images, {meta.image_size} px, {model_cfg.name}, "
          f"batch {cfg.batch_size}, {torch.get_num_threads()} threads, {epochs} epochs")
    print(f"head epoch through the frozen backbone: {full:.3f} s "
          f"({len(data.labels) / full:.0f} images/s)")
    print(f"head epoch on stored features:          {fast:.4f} s "
          f"({len(data.labels) / fast:.0f} images/s)")
    print(f"computing the features once:            {results['features'][1]:.3f} s")
    print(f"speed-up per epoch: {full / fast:.1f}x; largest head weight difference after "
          f"{epochs} epochs: {diff:.2e}")


if __name__ == "__main__":
    main()
