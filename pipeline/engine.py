"""The one training loop: batches from cached arrays, train_one_epoch and predict.

Training reads uint8 rows from the cache's .npy files, a batch at a time; normalisation
and the cheap per-epoch augmentation run batch-wise on tensors, on the GPU if present.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.augment import random_flip_shift
from pipeline.models import Preprocessing


class NpyRows:
    """Random access to the rows of an (N, ...) .npy file by positioned reads.

    Unlike a memory map, nothing stays mapped: rows read once live only in the OS page
    cache, so a process's resident memory does not grow with the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; the cache writes C order")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` ((B,) int) as a new (B, ...) array."""
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(np.asarray(index, dtype=np.int64)):
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range for {self.path} ({self.shape[0]} rows)")
            os.preadv(self._fd, [out[j]], self.offset + int(i) * self.row_bytes)
        return out

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class ArraySplit:
    """One cached split: (N, H, W, 3) uint8 images and (N,) int64 labels, row-aligned."""

    images: NpyRows
    labels: np.ndarray
    ids: tuple[str, ...]


def load_split(cache_dir: Path, split: str, ids: list[str], *, view: int | None = None
               ) -> ArraySplit:
    """Open one split of the cache (read batch by batch, never loaded whole).

    ``view`` k picks the k-th pre-augmented copy of the train split instead of the plain
    resized images.
    """
    name = f"{split}_images.npy" if view is None else f"{split}_view{view}_images.npy"
    images = NpyRows(Path(cache_dir) / name)
    labels = np.load(Path(cache_dir) / f"{split}_labels.npy")
    if len(images) != len(labels) or len(labels) != len(ids):
        raise ValueError(f"{cache_dir}: {name} has {len(images)} rows, labels {len(labels)}, "
                         f"ids {len(ids)}; rebuild the cache (dvc repro)")
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
        index = np.sort(order[start:start + batch_size])  # ascending reads are sequential
        yield torch.from_numpy(data.images[index]), torch.from_numpy(data.labels[index])


def to_input(images: torch.Tensor, prep: Preprocessing, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 normalised with the weights' mean/std.

    The result is channels_last in memory (the cache's HWC layout as it is): with a
    channels_last model that is 1.6-1.8x faster on CPU for EfficientNet-Lite0.
    """
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
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
                    loss_fn: nn.Module, hflip: bool, shift: int, amp: bool, desc: str
                    ) -> dict[str, float]:
    """One pass over ``data``; the scheduler steps per batch. Returns loss and speed.

    ``hflip`` and ``shift`` are the per-epoch random flips and translations. The caller
    sets train/eval modes (frozen BatchNorm stays in eval mode).
    """
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    steps = -(-len(data.labels) // batch_size)
    for images, labels in tqdm(batches(data, batch_size, generator=generator), total=steps,
                               desc=desc, leave=False, mininterval=1.0):
        x = random_flip_shift(to_input(images, prep, device), hflip=hflip, shift=shift,
                              generator=generator)
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


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The test-time views of a (B, C, H, W) batch: itself (``none``), plus its mirror
    (``flip``), or five crops shifted by H/8 from a padded copy (``crops``)."""
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    h, w = x.shape[-2:]
    p = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
    offsets = [(p, p), (0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p)]
    return [padded[..., dy:dy + h, dx:dx + w] for dy, dx in offsets]


@torch.inference_mode()
def predict(model: nn.Module, data: ArraySplit, *, prep: Preprocessing,
            device: torch.device, batch_size: int, amp: bool = False,
            tta: str = "none") -> np.ndarray:
    """(N, C) float64 class probabilities for every image, in row order (averaged over
    the test-time views when ``tta`` is not ``none``)."""
    model.eval()
    out = []
    for images, _ in batches(data, batch_size):
        views = tta_views(to_input(images, prep, device), tta)
        probs = torch.zeros(())
        for x in views:
            with _autocast(device, amp):
                logits = model(x)
            probs = probs + torch.softmax(logits.float(), dim=1).cpu().double()
        out.append((probs / len(views)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
