"""The one training loop: batches from cached arrays, train_one_epoch and predict.

Training reads uint8 arrays (memory-mapped from the cache); normalisation and the
cheap per-epoch augmentation run batch-wise on tensors, on the GPU when there is one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.models import Preprocessing


@dataclass(frozen=True)
class ArraySplit:
    """One cached split: (N, H, W, 3) uint8 images and (N,) int64 labels, row-aligned."""

    images: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]


def load_split(cache_dir: Path, split: str, ids: list[str]) -> ArraySplit:
    """Memory-map one split of the cache (nothing is read until a batch needs it)."""
    images = np.load(Path(cache_dir) / f"{split}_images.npy", mmap_mode="r")
    labels = np.load(Path(cache_dir) / f"{split}_labels.npy")
    return ArraySplit(images, labels, tuple(ids))


def batches(data: ArraySplit, batch_size: int, *, generator: torch.Generator | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (B, H, W, 3) uint8 and (B,) int64 batches; shuffled when given a generator."""
    n = len(data.labels)
    if generator is not None:
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        index = np.sort(order[start:start + batch_size])  # sorted reads are sequential
        yield torch.from_numpy(data.images[index]), torch.from_numpy(data.labels[index])


def to_input(images: torch.Tensor, prep: Preprocessing, device: torch.device, *,
             hflip_generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalised on ``device``.

    With ``hflip_generator``, each image is flipped left-right with probability 0.5.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if hflip_generator is not None:
        flip = torch.rand(x.shape[0], generator=hflip_generator) < 0.5
        x[flip.to(device)] = x[flip.to(device)].flip(-1)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _autocast(device: torch.device, amp: bool) -> Any:
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() \
        else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda")


def train_one_epoch(model: nn.Module, data: ArraySplit, *, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, prep: Preprocessing,
                    device: torch.device, batch_size: int, generator: torch.Generator,
                    loss_fn: nn.Module, hflip: bool, amp: bool, desc: str) -> dict[str, float]:
    """One pass over ``data``; the scheduler steps per batch. Returns loss and speed.

    The caller sets train/eval modes (frozen BatchNorm stays in eval mode).
    """
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    steps = -(-len(data.labels) // batch_size)
    for images, labels in tqdm(batches(data, batch_size, generator=generator), total=steps,
                               desc=desc, leave=False, mininterval=1.0):
        x = to_input(images, prep, device, hflip_generator=generator if hflip else None)
        y = labels.to(device)
        with _autocast(device, amp):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        seen += len(y)
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else 0.0}


@torch.inference_mode()
def predict(model: nn.Module, data: ArraySplit, *, prep: Preprocessing,
            device: torch.device, batch_size: int, amp: bool = False) -> np.ndarray:
    """(N, C) float64 class probabilities for every image, in row order."""
    model.eval()
    out = []
    for images, _ in batches(data, batch_size):
        with _autocast(device, amp):
            logits = model(to_input(images, prep, device))
        out.append(torch.softmax(logits.float(), dim=1).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
