"""cache stage: decode every kept image once, resize it, store each split as arrays (a
text project: each split's token ids, pipeline.modality.text.cache, at ``cache.max_length``).

Writes ``data/cache/{split}_images.npy`` ((N, S, S, 3) uint8, read a batch at a time
by training), ``{split}_labels.npy`` ((N,) int64 class indices), with ``cache.views``
= K > 0 also ``train_view{k}_images.npy`` (K seeded augmented copies of the train
split), and ``meta.json`` (class names in index order, image size, views, image ids
per split, row-aligned). Nothing here is random unless seeded: same inputs, same bytes.

``cache.image_size: auto`` resolves (pipeline.finetuning.autosize, upscale 6) from the backbone's
pretrained input and test sizes and the images' median short side, all as the embed
stage measured them (data/embed/meta.json): its backbone is embed.model, by default the
same as model.name (this stage must not read the model section: training-only settings
must not rerun it). The size, its reason and the data's profile (``photo`` | ``small``,
which the train stage's ``auto`` settings follow) go to the cache's meta.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.contracts.cachefiles import CacheMeta, write_meta, write_rows
from pipeline.contracts.embedfiles import read_meta as read_embed_meta
from pipeline.contracts.manifest import read_manifest, resolve
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.core.files import atomic_dir, check_space
from pipeline.modality import UnreadableItem, plugins
from pipeline.modality.image.cache import MAX_PIXELS, resolve_size, write_cache
from pipeline.modality.image.decoding import natural_key
from pipeline.modality.itemkinds import item_texts
from pipeline.modality.text.cache import write_text_cache
from pipeline.params.cache import CacheConfig
from pipeline.params.data import DataConfig
from pipeline.splitting.assign import SPLITS


def run(data: DataConfig, cfg: CacheConfig, split_manifest: Path, out_dir: Path, *,
        embed_dir: Path = paths.EMBED_DIR) -> dict:
    """Build the cache from the split manifest; return its meta."""
    size, reason, profile = resolve_size(cfg, embed_dir)
    print(f"cache: image_size {reason}; data profile {profile}")
    df = read_manifest(split_manifest)
    classes = sorted(set(df["label"]), key=natural_key)
    class_index = {c: i for i, c in enumerate(classes)}
    root = Path(data.root)
    needed = sum(len(df[df["split"] == split]) * size * size * 3 *
                 (1 + (cfg.views if split == "train" else 0)) for split in SPLITS)
    check_space(out_dir.parent, needed, f"the cache at {size} px")
    with atomic_dir(out_dir) as partial:  # the old cache stays whole until the new one is
        meta = write_cache(df, root, partial, cfg, size, reason, profile, class_index)
    print("cache: " + ", ".join(f"{s} {len(meta.ids[s])}" for s in SPLITS) +
          f" images at {size}x{size}")
    return json.loads(meta.to_json())


def run_texts(data: DataConfig, cfg: CacheConfig, split_manifest: Path, out_dir: Path, *,
              embed_dir: Path = paths.EMBED_DIR) -> dict:
    """A text project's cache: each split's token ids (pipeline.modality.text.cache) with the
    tokenizer of the encoder the embed stage used; return its meta."""
    encoder = read_embed_meta(embed_dir).model.get("encoder", "")
    df = read_manifest(split_manifest)
    classes = sorted(set(df["label"]), key=natural_key)
    class_index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for split in SPLITS:
        rows = df[df["split"] == split].sort_values("image_id", kind="stable")
        found = item_texts(rows, Path(data.root), range(len(rows)))
        for rel, item in zip(rows["path"], found):
            if isinstance(item, Exception):
                raise PipelineError(f"{rel} became unreadable after cleaning ({item}); "
                                    f"rerun dvc repro")
        splits[split] = ([t[0] for t in found],  # type: ignore[index]
                         np.array([class_index[c] for c in rows["label"]], dtype=np.int64),
                         list(rows["image_id"]))
    with atomic_dir(out_dir) as partial:
        meta = write_text_cache(partial, splits, classes, model_name=encoder,
                                max_length=cfg.max_length, truncation=cfg.truncation)
    print("cache: " + ", ".join(f"{s} {len(meta.ids[s])}" for s in SPLITS) +
          f" texts as token ids of {encoder}")
    return json.loads(meta.to_json())


def run_items(data: DataConfig, cfg: CacheConfig, split_manifest: Path, out_dir: Path,
              modality: str) -> dict:
    """Another modality's cache (pipeline.modality.plugins): each split's items decoded and
    fitted by its codec, stacked into one array; return its meta. The auto schedule is
    the small images' one (``profile`` small)."""
    codec = plugins.load(modality).CODEC
    df = read_manifest(split_manifest)
    classes = sorted(set(df["label"]), key=natural_key)
    class_index = {c: i for i, c in enumerate(classes)}
    meta = CacheMeta(classes=classes, image_size=0, fit=cfg.fit, views=0, ids={},
                     profile="small", modality=modality)
    with atomic_dir(out_dir) as partial:
        for split in SPLITS:
            rows = df[df["split"] == split].sort_values("image_id", kind="stable")
            items = []
            for rel in rows["path"]:
                try:
                    item = codec.decode(resolve(Path(data.root), rel), max_pixels=MAX_PIXELS)
                except UnreadableItem as exc:
                    raise PipelineError(f"{rel} became unreadable after cleaning ({exc}); "
                                        f"rerun dvc repro") from None
                items.append(codec.fit(item, 0, fit=cfg.fit))
            labels = np.array([class_index[c] for c in rows["label"]], dtype=np.int64)
            write_rows(partial, split, np.stack(items) if items else np.zeros((0, 0)), labels)
            meta.ids[split] = list(rows["image_id"])
        write_meta(partial, meta)
    print("cache: " + ", ".join(f"{s} {len(meta.ids[s])}" for s in SPLITS) +
          f" items of {modality}")
    return json.loads(meta.to_json())


def main() -> None:
    """Entry point of the DVC stage."""
    data, cache = load_sections("data", "cache")
    modality = read_embed_meta(paths.EMBED_DIR).modality
    if modality == "text":
        run_texts(data, cache, paths.SPLIT, paths.CACHE_DIR)
    elif modality == "image":
        run(data, cache, paths.SPLIT, paths.CACHE_DIR)
    else:
        run_items(data, cache, paths.SPLIT, paths.CACHE_DIR, modality)


if __name__ == "__main__":
    run_stage("cache", main)
