"""The one training loop: batches from cached arrays, train_one_epoch and predict.

Training reads uint8 rows from the cache's .npy files, a batch at a time; normalisation
and the cheap per-epoch augmentation run batch-wise on tensors, on the GPU if present.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.contracts.cachefiles import ArraySplit
from pipeline.modality import BatchAdapter


def batch_indices(n: int, batch_size: int, *, generator: torch.Generator | None = None,
                  rank: int = 0, world: int = 1, weights: np.ndarray | None = None,
                  lengths: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Row indices of each batch (sorted: ascending reads are sequential); shuffled when
    given a generator, or with ``weights`` ((N,), and a generator) n rows drawn with
    replacement with probability proportional to their weight, or with ``lengths`` ((N,),
    and a generator) shuffled and then grouped so that each batch holds rows of similar
    length (transformers' ``get_length_grouped_indices``, as its Trainer's
    ``group_by_length``: the shuffled rows sorted by length within chunks of up to 50
    batches, the longest batch first). Under DistributedDataParallel every rank draws the
    same order and takes its own share (``rank::world``) of each global batch."""
    if weights is not None:
        order = torch.multinomial(torch.from_numpy(weights), n, replacement=True,
                                  generator=generator).numpy()
    elif generator is not None and lengths is not None:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        order = np.asarray(get_length_grouped_indices(lengths.tolist(), batch_size,
                                                      generator=generator), dtype=np.int64)
    elif generator is not None:
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    for start in range(0, batch_count(n, batch_size, world) * batch_size, batch_size):
        yield np.sort(order[start:start + batch_size])[rank::world]


def batch_count(n: int, batch_size: int, world: int = 1) -> int:
    """Batches :func:`batch_indices` yields: a last global batch too small to give every
    rank a row is left out (an empty share would make a rank's loss NaN)."""
    return n // batch_size + (n % batch_size >= world)


def batches(data: ArraySplit, batch_size: int, *, generator: torch.Generator | None = None,
            rank: int = 0, world: int = 1, pin: bool = False,
            weights: np.ndarray | None = None, lengths: np.ndarray | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (B, H, W, 3) uint8 and (B,) int64 batches; shuffled when given a generator
    (drawn by ``weights``, or grouped by ``lengths``, when given: :func:`batch_indices`);
    ``pin`` puts them in page-locked memory for asynchronous copies to a GPU."""
    for index in batch_indices(len(data.labels), batch_size, generator=generator,
                               rank=rank, world=world, weights=weights, lengths=lengths):
        yield rows_batch(data, index, pin)


def rows_batch(data: ArraySplit, index: np.ndarray, pin: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached rows and labels at ``index``."""
    images, labels = torch.from_numpy(data.images[index]), torch.from_numpy(data.labels[index])
    return (images.pin_memory(), labels.pin_memory()) if pin else (images, labels)


def inference_batches(data: ArraySplit, batch_size: int, adapter: BatchAdapter
                      ) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], np.ndarray]:
    """Batches for a pass over every row, and the row order they follow: longest first
    when the adapter gives lengths (texts: each batch is then cut to similar lengths),
    else row order. Put results back with ``out[order] = results``."""
    n = len(data.labels)
    lengths = adapter.lengths(data.images) if n else None
    order = np.arange(n) if lengths is None else np.argsort(-lengths, kind="stable")
    return (rows_batch(data, np.sort(order[s:s + batch_size]) if lengths is None
                       else order[s:s + batch_size])
            for s in range(0, n, batch_size)), order


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision dtype on this device: bf16 where the GPU has it, else fp16
    (which needs a gradient scaler); None when off (``amp`` false, or not CUDA)."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp: bool) -> Any:
    dtype = amp_dtype(device, amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def train_one_epoch(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                    steps: int, optimizer: torch.optim.Optimizer, on_step: Callable[[], None],
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    device: torch.device, amp: bool, scaler: torch.amp.GradScaler,
                    accumulate: int = 1, clip_grad: float = 0.0,
                    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                    | None = None, desc: str = "") -> dict[str, float]:
    """One pass over ``batches`` of model-ready inputs and labels; returns the loss sum,
    rows seen, correct predictions (against the unmixed labels) and seconds.

    Gradients of ``accumulate`` batches make one optimizer step, after which ``on_step``
    runs (learning-rate schedule, EMA). ``mix`` turns (x, labels) into mixed inputs and
    soft targets (mixup / cutmix). The caller sets train/eval modes (frozen BatchNorm
    stays in eval mode).
    """
    start = time.perf_counter()
    total_loss, seen, correct = 0.0, 0, 0
    optimizer.zero_grad(set_to_none=True)
    for i, (x, labels) in enumerate(tqdm(batches, total=steps, desc=desc, leave=False,
                                         mininterval=1.0)):
        y = labels.to(device, non_blocking=True)
        target = y
        if mix is not None:
            x, target = mix(x, y)
        with autocast(device, amp):
            logits = net(x)
            loss = loss_fn(logits, target)
        scaler.scale(loss / accumulate).backward()
        if (i + 1) % accumulate == 0 or i + 1 == steps:
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]
                                          if p.grad is not None], clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            on_step()
        total_loss += loss.item() * len(y)
        seen += len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
    seconds = time.perf_counter() - start
    return {"loss_sum": total_loss, "seen": seen, "correct": correct, "seconds": seconds}


@torch.inference_mode()
def head_inputs(model: nn.Module, head: nn.Module, data: ArraySplit, *, inputs: BatchAdapter,
                device: torch.device, batch_size: int, amp: bool = False,
                mirror: bool = False) -> torch.Tensor:
    """(N, D) float32 inputs of ``head`` for every row: the frozen backbone's features.

    Run once per cached view when only the head trains: in eval mode these never change,
    so the head can train on them without recomputing the backbone. ``mirror``: of the
    left-right mirrored rows (what ``train.hflip`` shows the network).
    """
    adapter = inputs  # how cached rows become model input (the modality's)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].float()))
    model.eval()  # the caller restores its modes (models.train_mode)
    stream, order = inference_batches(data, batch_size, adapter)
    try:
        for images, _ in stream:
            x = adapter.to_input(images, device)
            with autocast(device, amp):
                model(x.flip(-1) if mirror else x)
    finally:
        hook.remove()
    if not captured:
        return torch.zeros((0, 0), device=device)
    feats = torch.cat(captured)
    return feats[torch.from_numpy(np.argsort(order)).to(feats.device)]


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
def predict(model: nn.Module, data: ArraySplit, *, inputs: BatchAdapter,
            device: torch.device, batch_size: int, amp: bool = False,
            tta: str = "none") -> np.ndarray:
    """(N, C) float64 class probabilities for every image, in row order (averaged over
    the test-time views when ``tta`` is not ``none``)."""
    adapter = inputs  # how cached rows become model input (the modality's)
    model.eval()
    out = []
    stream, order = inference_batches(data, batch_size, adapter)
    for images, _ in stream:
        out.append(view_probabilities(model, adapter.to_input(images, device), tta,
                                      device=device, amp=amp))
    if not out:
        return np.zeros((0, 0))
    probs = np.concatenate(out)
    probs[order] = probs.copy()
    return probs


@torch.inference_mode()
def view_probabilities(model: nn.Module, x: torch.Tensor, tta: str, *, device: torch.device,
                       amp: bool = False) -> np.ndarray:
    """(B, C) float64 class probabilities of a (B, C, H, W) model-input batch, averaged
    over its test-time views (:func:`tta_views`); evaluate, predict and serve share it."""
    probs = torch.zeros(())
    views = tta_views(x, tta)
    for view in views:
        with autocast(device, amp):
            logits = model(view)
        probs = probs + torch.softmax(logits.float(), dim=1).cpu().double()
    return (probs / len(views)).numpy()
