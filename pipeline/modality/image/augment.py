"""Augmentation: the seeded view policy the cache stores, and the cheap per-epoch kind.

Views are made once by the cache stage with torchvision ``transforms.v2`` and a seed per
(view, image), so the same params give byte-identical views in any order. Flips and
shifts that must differ every epoch run batch-wise on tensors, on the GPU if present.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from pipeline.params.cache import AugmentConfig


def view_transform(cfg: AugmentConfig, size: int) -> v2.Compose:
    """The v2 pipeline for one view: uint8 (3, H, W) in, uint8 (3, size, size) out."""
    steps: list[torch.nn.Module] = [
        v2.RandomResizedCrop(size, scale=(cfg.crop_scale_min, 1.0), antialias=True)]
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.rotation > 0:
        steps.append(v2.RandomRotation(cfg.rotation))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
    if cfg.auto == "randaugment":
        steps.append(v2.RandAugment())
    elif cfg.auto == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    if cfg.erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.erasing))
    return v2.Compose(steps)


def make_views(pixels: np.ndarray, transform: v2.Compose, *, views: int, size: int,
               seed: int, row: int) -> np.ndarray:
    """(views, size, size, 3) uint8 augmented copies of one (H, W, 3) uint8 image.

    Each view is seeded by (seed, view, row) alone, so the bytes do not depend on the
    order in which images are processed. Large images are first shrunk so their short
    side is at most 2 * size (the crop never needs more).
    """
    img = Image.fromarray(pixels)
    short = min(img.size)
    if short > 2 * size:
        scale = 2 * size / short
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
    chw = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    out = np.empty((views, size, size, 3), dtype=np.uint8)
    for k in range(views):
        torch.manual_seed(int(np.random.SeedSequence([seed, k, row]).generate_state(1)[0]))
        out[k] = transform(chw).permute(1, 2, 0).numpy()
    return out
