"""cache stage: decode every kept image once, resize it, store each split as arrays.

Writes ``data/cache/{split}_images.npy`` ((N, S, S, 3) uint8, read a batch at a time
by training), ``{split}_labels.npy`` ((N,) int64 class indices), with ``cache.views``
= K > 0 also ``train_view{k}_images.npy`` (K seeded augmented copies of the train
split), and ``meta.json`` (class names in index order, image size, views, image ids
per split, row-aligned). Nothing here is random unless seeded: same inputs, same bytes.

``cache.image_size: auto`` resolves (pipeline.autosize, upscale 6) from the backbone's
pretrained input size and the images' median short side, both as the embed stage
measured them (data/embed/meta.json): its backbone is embed.model, by default the same
as model.name (this stage must not read the model section: training-only settings must
not rerun it). The size and its reason go to the cache's meta.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm import tqdm

from pipeline import paths
from pipeline.augment import make_views, view_transform
from pipeline.autosize import resolve_image_size
from pipeline.cachefiles import CacheMeta, images_name, labels_name, write_meta
from pipeline.config import load_sections
from pipeline.embedfiles import read_meta as read_embed_meta
from pipeline.errors import PipelineError, run_stage
from pipeline.images import IMAGES, natural_key
from pipeline.manifest import read_manifest, resolve
from pipeline.modality import UnreadableItem
from pipeline.params.cache import CacheConfig
from pipeline.params.data import DataConfig
from pipeline.splitting import SPLITS

# The clean stage has already rejected images above its own limit; this guard only
# stops a bomb that appeared after cleaning.
MAX_PIXELS = 1 << 30
UPSCALE = 6  # auto: small images are enlarged 6 x their median short side (digits: 48)


def resolve_size(cfg: CacheConfig, embed_dir: Path) -> tuple[int, str]:
    """cache.image_size in pixels and why (``auto``: from the embed stage's measurements)."""
    if cfg.image_size != "auto":
        return resolve_image_size(cfg.image_size, backbone_size=0, short_sides=[])
    meta = read_embed_meta(embed_dir)
    if not meta.backbone_size:
        raise PipelineError(f"{embed_dir} predates cache.image_size auto: rerun dvc repro")
    sides = np.array([meta.short_side_median] if meta.short_side_median else [])
    size, reason = resolve_image_size("auto", backbone_size=meta.backbone_size,
                                      short_sides=sides, upscale=UPSCALE)
    arch = meta.model.get("arch", "?")
    return size, f"{reason} (backbone {arch}: {meta.backbone_size} px)"


def run(data: DataConfig, cfg: CacheConfig, split_manifest: Path, out_dir: Path, *,
        embed_dir: Path = paths.EMBED_DIR) -> dict:
    """Build the cache from the split manifest; return its meta."""
    size, reason = resolve_size(cfg, embed_dir)
    print(f"cache: image_size {reason}")
    df = read_manifest(split_manifest)
    classes = sorted(set(df["label"]), key=natural_key)
    class_index = {c: i for i, c in enumerate(classes)}
    root = Path(data.root)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    meta = CacheMeta(classes=classes, image_size=size, fit=cfg.fit, views=cfg.views, ids={},
                     image_size_reason=reason)
    transform = view_transform(cfg.augment, size)
    for split in SPLITS:
        rows = df[df["split"] == split].sort_values("image_id", kind="stable")
        shape = (len(rows), size, size, 3)
        # open_memmap writes row by row: the stage's memory does not grow with N.
        images = open_memmap(out_dir / images_name(split), mode="w+", dtype=np.uint8,
                             shape=shape)
        k_views = cfg.views if split == "train" else 0
        views = [open_memmap(out_dir / images_name(split, k), mode="w+",
                             dtype=np.uint8, shape=shape) for k in range(k_views)]
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
        np.save(out_dir / labels_name(split), labels)
        meta.ids[split] = list(rows["image_id"])
    write_meta(out_dir, meta)
    print("cache: " + ", ".join(f"{s} {len(meta.ids[s])}" for s in SPLITS) +
          f" images at {size}x{size}")
    return json.loads(meta.to_json())


def main() -> None:
    """Entry point of the DVC stage."""
    data, cache = load_sections("data", "cache")
    run(data, cache, paths.SPLIT, paths.CACHE_DIR)


if __name__ == "__main__":
    run_stage("cache", main)
