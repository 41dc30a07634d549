"""Benchmark of the input pipeline: run on purpose, prints numbers, asserts nothing.

    python benchmarks/input_pipeline.py [--images DIR] [--size 128] [--batch 32] [--smoke]

1. Throughput, unfrozen backbone (model.name from params.yaml, its default weights):
   - loop:     the real training loop (engine.train_one_epoch) reading the cache stage's
               arrays, per-epoch flips on tensors;
   - bound:    the same model, forward + backward + step on random tensors already in
               memory (the compute bound), same batch size, image size, step count;
   - tutorial: torchvision ImageFolder of the image files, per-epoch transforms
               (RandomResizedCrop, flip, ToTensor, Normalize), DataLoader with 2 workers.
   ``--images`` is a class-per-folder tree of photos (default: the hymenoptera photos in
   ../shared when present, else 400 generated 500x375 JPEGs).
2. Peak resident memory of one training epoch over a cache of N random 64x64 images,
   for N = 20,000 and 60,000 (a child process per N, timm's tiny test_efficientnet so
   the epoch takes seconds: the data path is what is measured).

``--smoke``: 16 generated 160x120 photos at 32 px, timm's tiny test model with random
weights, one epoch, one cache of 16 images: every step in seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from common import add_smoke, smoke_params
from numpy.lib.format import open_memmap
from PIL import Image
from torch import nn
from torchvision import datasets, transforms

from pipeline.contracts.cachefiles import ArraySplit, NpyRows, open_split
from pipeline.contracts.sources import assign_ids, list_folder
from pipeline.core.config import parse_sections
from pipeline.finetuning.backbones import create_model
from pipeline.finetuning.engine import batches, train_one_epoch
from pipeline.finetuning.models import layer_groups, set_trainable, train_mode
from pipeline.modality.image import cache as image_cache
from pipeline.modality.image.inputs import Preprocessing, to_input
from pipeline.modality.image.model import random_flip_shift

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera" / "train"


def _synthetic_photos(root: Path, n: int = 400, size: tuple[int, int] = (500, 375)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)  # smooth, photo-like
        img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
        img.save(folder / f"{i:04d}.jpg", quality=90)
    return root


def _readable_tree(src: Path, dst: Path) -> Path:
    """Symlink the files ImageFolder and PIL can read (the set's .gif placeholder is left
    out of both recipes, so they see the same images)."""
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path.resolve())
    return dst


def _bound(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, batch: int,
           size: int, classes: int) -> float:
    # the value range and memory layout of the loop's normalised images
    x = (torch.rand(batch, 3, size, size) * 2 - 1).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def epoch(model: nn.Module, data: ArraySplit, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, prep: Preprocessing, batch: int,
          generator: torch.Generator, *, hflip: bool, shift: int, desc: str
          ) -> dict[str, float]:
    """One epoch of the train stage's loop on cached images (engine.train_one_epoch)."""
    cpu = torch.device("cpu")
    stream = ((random_flip_shift(to_input(x, prep, cpu), hflip=hflip, shift=shift,
                                 generator=generator), y)
              for x, y in batches(data, batch, generator=generator))
    return train_one_epoch(model, stream, steps=-(-len(data.labels) // batch),
                           optimizer=optimizer, on_step=scheduler.step,
                           loss_fn=nn.CrossEntropyLoss(), device=cpu, amp=False,
                           scaler=torch.amp.GradScaler("cpu", enabled=False), desc=desc)


def _tutorial(model: nn.Module, optimizer: torch.optim.Optimizer, root: Path, batch: int,
              size: int, prep: Preprocessing) -> float:
    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(prep.mean, prep.std)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), tf), batch_size=batch,
                                         shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    loss_fn = nn.CrossEntropyLoss()
    seen = 0
    start = time.perf_counter()
    for x, y in loader:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def throughput(images: Path, size: int, batch: int, epochs: int, params: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        root = _readable_tree(images, tmp_path / "images")
        params["cache"]["image_size"] = size
        cache_cfg, model_cfg = parse_sections(params, "cache", "model")
        df = assign_ids(list_folder(root), root).assign(split="train")
        names = sorted(set(df["label"]))
        start = time.perf_counter()
        (tmp_path / "cache").mkdir()
        meta = image_cache.write_cache(df, root, tmp_path / "cache", cache_cfg, size, "benchmark",
                                 "photo", {name: i for i, name in enumerate(names)})
        cache_seconds = time.perf_counter() - start
        train = open_split(tmp_path / "cache", meta, "train")
        classes = len(meta.classes)
        steps = -(-len(train.labels) // batch)

        torch.manual_seed(0)
        model, prep, _ = create_model(model_cfg, classes)
        model.to(memory_format=torch.channels_last)  # as the train stage does
        groups = layer_groups(model)
        set_trainable(model, groups, len(groups))
        train_mode(model, bn="frozen")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        _bound(model, optimizer, 2, batch, size, classes)  # warm-up
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        generator = torch.Generator().manual_seed(0)
        # bound, loop, bound: the mean of the two bounds brackets any drift in between
        bounds = [_bound(model, optimizer, epochs * steps, batch, size, classes)]
        seen, seconds = 0, 0.0
        for _ in range(epochs):
            stats = epoch(model, train, optimizer, scheduler, prep, batch, generator,
                          hflip=True, shift=0, desc="loop")
            seen += len(train.labels)
            seconds += stats["seconds"]
        loop = seen / seconds
        bounds.append(_bound(model, optimizer, epochs * steps, batch, size, classes))
        bound = sum(bounds) / 2
        tutorial = _tutorial(model, optimizer, root, batch, size, prep)
    print(f"images: {len(train.labels)} from {images}, {size}x{size}, batch {batch}, "
          f"{model_cfg.name} unfrozen, {torch.get_num_threads()} threads")
    print(f"cache build: {cache_seconds:.1f} s ({len(train.labels) / cache_seconds:.0f} images/s)")
    print(f"loop (cache):          {loop:8.1f} images/s")
    print(f"bound (random tensors): {bound:7.1f} images/s   loop / bound    = {loop / bound:.3f}"
          f"  (bounds before and after the loop: {bounds[0]:.1f}, {bounds[1]:.1f})")
    print(f"tutorial (ImageFolder): {tutorial:7.1f} images/s   loop / tutorial = "
          f"{loop / tutorial:.2f}")


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(cache_dir: Path) -> None:
    """One training epoch over cache_dir/train_images.npy; print the peak RSS."""
    labels = np.load(cache_dir / "train_labels.npy")
    data = ArraySplit(NpyRows(cache_dir / "train_images.npy"), labels, ())
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    before = _peak_rss_mib()
    stats = epoch(model, data, optimizer, scheduler, Preprocessing((0.5,) * 3, (0.5,) * 3), 64,
                  torch.Generator().manual_seed(0), hflip=True, shift=4,
                  desc=f"epoch on {len(labels)}")
    print(f"{len(labels)} {before:.1f} {_peak_rss_mib():.1f} {stats['seconds']:.1f}")


def memory(counts: list[int]) -> None:
    results = {}
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            cache_dir = Path(tmp)
            images = open_memmap(cache_dir / "train_images.npy", mode="w+", dtype=np.uint8,
                                 shape=(n, 64, 64, 3))
            rng = np.random.default_rng(0)
            for start in range(0, n, 5000):  # written in chunks by this (parent) process
                stop = min(n, start + 5000)
                images[start:stop] = rng.integers(0, 255, (stop - start, 64, 64, 3),
                                                  dtype=np.uint8)
            images.flush()
            del images
            np.save(cache_dir / "train_labels.npy", rng.integers(0, 10, n))
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(cache_dir)],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            _, before, peak, seconds = out.stdout.split()[-4:]
            results[n] = float(peak)
            print(f"epoch over {n:6d} cached 64x64 images: peak RSS {float(peak):7.1f} MiB "
                  f"(before the epoch {float(before):.1f} MiB), {float(seconds):.1f} s, "
                  f"file {n * 64 * 64 * 3 / 2**20:.0f} MiB")
    if len(counts) == 2:
        small, large = counts
        print(f"peak RSS ratio {large} / {small}: {results[large] / results[small]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="loop epochs timed")
    parser.add_argument("--memory-counts", type=int, nargs="*", default=[20000, 60000])
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.smoke:
        params = smoke_params()
        args.size, args.batch, args.epochs, args.memory_counts = 32, 8, 1, [16]
    if not args.skip_throughput:
        images = args.images
        with tempfile.TemporaryDirectory() as tmp:
            if args.smoke:
                images = _synthetic_photos(Path(tmp), 16, (160, 120))
            elif images is None:
                images = HYMENOPTERA if HYMENOPTERA.is_dir() else _synthetic_photos(Path(tmp))
            throughput(images, args.size, args.batch, args.epochs, params)
    if args.memory_counts:
        memory(args.memory_counts)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    main()
