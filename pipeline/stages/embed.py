"""embed stage: one pooled feature vector per readable image, computed once.

Writes ``data/embed/embeddings.npy`` ((N, D) float32, L2-normalised, zero rows for
unreadable images), row-aligned with data/prepared/manifest.csv, and ``meta.json``
(image ids, which rows are valid, the backbone). The clean stage's near-duplicate,
label-error and outlier checks read them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline import paths
from pipeline.config import DataConfig, EmbedConfig, ModelConfig, load_sections, run_stage
from pipeline.engine import to_input
from pipeline.images import UnreadableImage, decode_image, fit_image
from pipeline.manifest import read_manifest, resolve
from pipeline.models import check_model_config, create_model
from pipeline.seeding import resolve_device


def run(data: DataConfig, cfg: EmbedConfig, prepared: Path, out_dir: Path, *,
        max_pixels: int = 89_478_485, device: str = "auto") -> np.ndarray:
    """Embed every image of the prepared manifest; return (N, D) float32."""
    model_cfg = ModelConfig(name=cfg.model, weights=cfg.weights, drop_rate=0.0)
    check_model_config(model_cfg)
    df = read_manifest(prepared)
    dev = resolve_device(device)
    model, prep, info = create_model(model_cfg, num_classes=0)
    model.to(dev).to(memory_format=torch.channels_last).eval()
    root = Path(data.root)
    valid = np.zeros(len(df), dtype=bool)
    chunks: list[np.ndarray] = []
    paths_list = list(df["path"])
    with torch.inference_mode():
        for start in tqdm(range(0, len(df), cfg.batch_size), desc="embed", mininterval=1.0):
            batch, rows = [], []
            for i in range(start, min(start + cfg.batch_size, len(df))):
                try:
                    pixels = decode_image(resolve(root, paths_list[i]), max_pixels=max_pixels)
                except UnreadableImage:
                    continue
                batch.append(fit_image(pixels, cfg.image_size, fit="crop"))
                rows.append(i)
            if batch:
                x = to_input(torch.from_numpy(np.stack(batch)), prep, dev)
                feats = torch.nn.functional.normalize(model(x).float(), dim=1).cpu().numpy()
                chunks.append((np.array(rows), feats))  # type: ignore[arg-type]
                valid[rows] = True
    dim = chunks[0][1].shape[1] if chunks else 0
    embeddings = np.zeros((len(df), dim), dtype=np.float32)
    for rows, feats in chunks:  # type: ignore[misc]
        embeddings[rows] = feats
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "embeddings.npy", embeddings)
    meta = {"ids": list(df["image_id"]), "valid": valid.tolist(), "model": info,
            "image_size": cfg.image_size}
    (out_dir / "meta.json").write_text(json.dumps(meta) + "\n")
    print(f"embed: {int(valid.sum())} of {len(df)} images, dimension {dim}")
    return embeddings


def main() -> None:
    """Entry point of the DVC stage."""
    data, embed = load_sections("data", "embed")
    run(data, embed, paths.PREPARED, paths.EMBED_DIR)


if __name__ == "__main__":
    run_stage("embed", main)
