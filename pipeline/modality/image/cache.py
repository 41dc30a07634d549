"""The cache of an image project: every kept image decoded once, fitted to the cache's
size (``cache.image_size``; ``auto`` from the backbone and the data, upscale 6 for
small images) and stored per split as (N, S, S, 3) uint8 arrays written row by row, with
the ``cache.views`` augmented copies of the train split (pipeline.modality.image.augment)
and the meta (pipeline.contracts.cachefiles). The cache stage calls it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from tqdm import tqdm

from pipeline.contracts.cachefiles import (
    CacheMeta,
    images_name,
    labels_name,
    write_meta,
)
from pipeline.contracts.embedfiles import META as EMBED_META
from pipeline.contracts.embedfiles import read_meta as read_embed_meta
from pipeline.contracts.manifest import resolve
from pipeline.core.errors import PipelineError
from pipeline.core.files import save_npy
from pipeline.finetuning.autosize import data_profile, resolve_image_size
from pipeline.modality import UnreadableItem
from pipeline.modality.image.augment import make_views, view_transform
from pipeline.modality.image.decoding import IMAGES
from pipeline.params.cache import CacheConfig
from pipeline.splitting.assign import SPLITS

# The clean stage has already rejected images above its own limit; this guard only
# stops a bomb that appeared after cleaning.
MAX_PIXELS = 1 << 30
# auto: small images are enlarged 4.5 x their median short side, rounded up to a multiple of
# 16 (digits: 48, 28-px Fashion-MNIST: 128). 6 x gave Fashion-MNIST 176 px: 0.892 in a 262 s
# train stage; 128 px 0.888 in 149 s (docs/measured.md)
UPSCALE = 4.5


def resolve_size(cfg: CacheConfig, embed_dir: Path) -> tuple[int, str, str]:
    """cache.image_size in pixels, why, and the data's profile (photo | small)."""
    if cfg.image_size != "auto" and not (Path(embed_dir) / EMBED_META).exists():
        return cfg.image_size, f"{cfg.image_size} px as set", "photo"  # benchmarks only
    meta = read_embed_meta(embed_dir)
    if not meta.backbone_size:
        raise PipelineError(f"{embed_dir} predates cache.image_size auto: rerun dvc repro")
    sides = np.array([meta.short_side_median] if meta.short_side_median else [])
    profile = data_profile(sides, meta.backbone_size)
    size, reason = resolve_image_size(cfg.image_size, backbone_size=meta.backbone_size,
                                      short_sides=sides, upscale=UPSCALE,
                                      test_size=meta.backbone_test_size)
    if cfg.image_size == "auto":
        reason += (f" (backbone {meta.model.get('arch', '?')}: {meta.backbone_size} px, "
                   f"test {meta.backbone_test_size or meta.backbone_size} px)")
    return size, reason, profile


def _allocated(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new (N, S, S, 3) uint8 .npy memory map with its blocks reserved on disk: a disk
    that fills up fails here with ENOSPC, never later as a SIGBUS while writing a row."""
    array = open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    with open(path, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
    return array


def write_cache(df: pd.DataFrame, root: Path, out_dir: Path, cfg: CacheConfig, size: int,
                reason: str, profile: str, class_index: dict[str, int]) -> CacheMeta:
    """Decode, fit and store every split's images, labels and train views in
    ``out_dir``; return the meta written beside them."""
    classes = list(class_index)
    meta = CacheMeta(classes=classes, image_size=size, fit=cfg.fit, views=cfg.views, ids={},
                     image_size_reason=reason, profile=profile)
    transform = view_transform(cfg.augment, size)
    for split in SPLITS:
        rows = df[df["split"] == split].sort_values("image_id", kind="stable")
        shape = (len(rows), size, size, 3)
        # open_memmap writes row by row: the stage's memory does not grow with N.
        images = _allocated(out_dir / images_name(split), shape)
        k_views = cfg.views if split == "train" else 0
        views = [_allocated(out_dir / images_name(split, k), shape) for k in range(k_views)]
        for i, rel in enumerate(tqdm(rows["path"], desc=f"cache {split}", mininterval=1.0)):
            try:
                pixels = IMAGES.decode(resolve(root, rel), max_pixels=MAX_PIXELS)
            except UnreadableItem as exc:
                raise PipelineError(f"{rel} became unreadable after cleaning ({exc}); "
                                    f"rerun dvc repro") from None
            images[i] = IMAGES.fit(pixels, size, fit=cfg.fit)
            if k_views:
                made = make_views(pixels, transform, views=k_views, size=size, seed=cfg.seed,
                                  row=i)
                for k in range(k_views):
                    views[k][i] = made[k]
        for array in (images, *views):
            array.flush()
        del images, views
        labels = np.array([class_index[c] for c in rows["label"]], dtype=np.int64)
        save_npy(out_dir / labels_name(split), labels)
        meta.ids[split] = list(rows["image_id"])
    write_meta(out_dir, meta)
    return meta
