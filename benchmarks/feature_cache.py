"""Benchmark: a head-only epoch on stored backbone features vs. one through the backbone.

    python benchmarks/feature_cache.py [--epochs 3]

Uses the demo cache (``dvc repro cache`` first) and params.yaml's model and train
settings. Times, with the train stage's own functions: computing the features once
(engine.head_inputs), head-only epochs on them, and head-only epochs that run the frozen
backbone forward every batch (train.feature_cache: false). Prints the median epoch times,
their ratio, and how far apart the two heads end up.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from pipeline import paths
from pipeline.backbones import create_model, head_module
from pipeline.cachefiles import open_split, read_meta
from pipeline.config import parse_sections
from pipeline.engine import batch_indices, batches, head_inputs, train_one_epoch
from pipeline.finetune import group_lrs, make_optimizer, param_groups, set_lrs
from pipeline.inputs import to_input
from pipeline.models import layer_groups, set_trainable, train_mode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    params = yaml.safe_load(Path("params.yaml").read_text())
    model_cfg, cfg = parse_sections(params, "model", "train")
    meta = read_meta(paths.CACHE_DIR)
    data = open_split(paths.CACHE_DIR, meta, "train")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model, prep, _ = create_model(model_cfg, len(meta.classes))
    model.to(memory_format=torch.channels_last)
    groups = layer_groups(model)
    steps = -(-len(data.labels) // cfg.batch_size)
    results = {}
    heads = {}
    for mode in ("backbone", "features"):
        net = copy.deepcopy(model)
        head = head_module(net)
        set_trainable(net, groups, 1)
        optimizer = make_optimizer(cfg, param_groups(net, groups, cfg.weight_decay))
        set_lrs(optimizer, group_lrs(cfg, cfg.phases[0], len(groups), 1))
        order = torch.Generator().manual_seed(0)
        torch.manual_seed(1)  # the same dropout masks in both modes
        extract = 0.0
        if mode == "features":
            start = time.perf_counter()
            feats = head_inputs(net, head, data, prep=prep, device=cpu,
                                batch_size=cfg.batch_size)
            extract = time.perf_counter() - start
        times = []
        for _ in range(args.epochs):
            train_mode(net, bn=cfg.bn)
            if mode == "features":
                stream = ((feats[torch.from_numpy(i)], torch.from_numpy(data.labels[i]))
                          for i in batch_indices(len(data.labels), cfg.batch_size,
                                                 generator=order))
                target: nn.Module = head
            else:
                stream = ((to_input(x, prep, cpu), y)
                          for x, y in batches(data, cfg.batch_size, generator=order))
                target = net
            stats = train_one_epoch(target, stream, steps=steps, optimizer=optimizer,
                                    on_step=lambda: None, loss_fn=nn.CrossEntropyLoss(),
                                    device=cpu, amp=False,
                                    scaler=torch.amp.GradScaler("cpu", enabled=False))
            times.append(stats["seconds"])
        results[mode] = (statistics.median(times), extract)
        heads[mode] = head.state_dict()
    full, fast = results["backbone"][0], results["features"][0]
    diff = max(float((heads["backbone"][k] - heads["features"][k]).abs().max())
               for k in heads["backbone"])
    print(f"{len(data.labels)} train images, {meta.image_size} px, {model_cfg.name}, "
          f"batch {cfg.batch_size}, {torch.get_num_threads()} threads, {args.epochs} epochs")
    print(f"head epoch through the frozen backbone: {full:.3f} s "
          f"({len(data.labels) / full:.0f} images/s)")
    print(f"head epoch on stored features:          {fast:.4f} s "
          f"({len(data.labels) / fast:.0f} images/s)")
    print(f"computing the features once:            {results['features'][1]:.3f} s")
    print(f"speed-up per epoch: {full / fast:.1f}x; largest head weight difference after "
          f"{args.epochs} epochs: {diff:.2e}")


if __name__ == "__main__":
    main()
