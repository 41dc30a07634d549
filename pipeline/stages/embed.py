"""embed stage: the one pass that decodes every image, before the split.

Writes ``data/embed/embeddings.npy`` ((N, D) float32, L2-normalised pooled features,
zero rows for unreadable images), row-aligned with data/prepared/manifest.csv, and
``meta.json`` (image ids, which rows decoded, the pixel hash of each decoded image, the
reason each other one is unreadable, the backbone). The clean stage reads all of it and
decodes nothing but the thumbnails of what it flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import embedfiles, paths
from pipeline.backbones import BackboneSpec, check_model_config, create_model
from pipeline.config import load_sections
from pipeline.embedfiles import EmbedMeta
from pipeline.errors import run_stage
from pipeline.images import IMAGES
from pipeline.inputs import ImageInput
from pipeline.manifest import read_manifest, resolve
from pipeline.modality import UnreadableItem
from pipeline.params.base import BaseConfig
from pipeline.params.data import DataConfig
from pipeline.params.embed import EmbedConfig
from pipeline.seeding import pin_cpu, resolve_device


def run(data: DataConfig, cfg: EmbedConfig, prepared: Path, out_dir: Path, *,
        device: str = "auto") -> np.ndarray:
    """Decode every image of the prepared manifest once and embed it; return (N, D)."""
    model_cfg = BackboneSpec(name=cfg.model, weights=cfg.weights)
    check_model_config(model_cfg)
    df = read_manifest(prepared)
    dev = resolve_device(device)
    model, prep, info = create_model(model_cfg, num_classes=0)
    model.to(dev).to(memory_format=torch.channels_last).eval()
    root = Path(data.root)
    codec, inputs = IMAGES, ImageInput(prep)  # the modality seam (pipeline.modality)
    hashes: list[str | None] = [None] * len(df)
    errors = [""] * len(df)
    rows: list[int] = []
    feats: list[np.ndarray] = []
    paths_list = list(df["path"])
    with torch.inference_mode():
        for start in tqdm(range(0, len(df), cfg.batch_size), desc="embed", mininterval=1.0):
            batch, batch_rows = [], []
            for i in range(start, min(start + cfg.batch_size, len(df))):
                try:
                    pixels = codec.decode(resolve(root, paths_list[i]),
                                          max_pixels=cfg.max_pixels)
                except UnreadableItem as exc:
                    errors[i] = str(exc)
                    continue
                hashes[i] = codec.content_hash(pixels)
                batch.append(codec.fit(pixels, cfg.image_size, fit="crop"))
                batch_rows.append(i)
            if batch:
                x = inputs.to_input(torch.from_numpy(np.stack(batch)), dev)
                feats.append(torch.nn.functional.normalize(model(x).float(), dim=1).cpu().numpy())
                rows.extend(batch_rows)
    stacked = np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)
    embeddings = np.zeros((len(df), stacked.shape[1]), dtype=np.float32)
    embeddings[rows] = stacked
    valid = [h is not None for h in hashes]
    embedfiles.write(out_dir, embeddings, EmbedMeta(
        ids=list(df["image_id"]), valid=valid, pixel_hash=hashes, error=errors, model=info,
        image_size=cfg.image_size))
    print(f"embed: {sum(valid)} of {len(df)} images, dimension {embeddings.shape[1]}")
    return embeddings


def main() -> None:
    """Entry point of the DVC stage."""
    base, data, embed = load_sections("base", "data", "embed")
    assert isinstance(base, BaseConfig)
    pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    run(data, embed, paths.PREPARED, paths.EMBED_DIR)


if __name__ == "__main__":
    run_stage("embed", main)
