"""embed stage: the one pass that decodes every image (or text), before the split.

Writes ``data/embed/embeddings.npy`` ((N, D) float32, L2-normalised features, zero rows
for unreadable items), row-aligned with data/prepared/manifest.csv, ``meta.json`` (item
ids, which rows decoded, the content hash of each decoded item, the reason each other
one is unreadable, the model; for images the resolved ``image_size``), the near-copy
signals and the calibration copies that clean's ``auto`` near-copy rule is calibrated on
(pipeline.dataquality.calibrate), all through ``pipeline.contracts.embedfiles``. The
modality's pass computes them: ``pipeline.modality.image.embed`` (pixel signals,
synthetic copies, the ``auto`` image size) or ``pipeline.modality.text.embed``. The clean
stage reads all of it and decodes nothing but the thumbnails of what it flags.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.contracts import embedfiles
from pipeline.contracts.embedfiles import EmbedMeta
from pipeline.contracts.manifest import read_manifest
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.core.files import atomic_dir
from pipeline.core.seeding import pin_cpu, resolve_device
from pipeline.modality.image.embed import embed_images
from pipeline.modality.itemkinds import resolve_modality
from pipeline.modality.text.embed import TEXT_SIGNALS, embed_texts
from pipeline.params.base import BaseConfig
from pipeline.params.data import DataConfig
from pipeline.params.embed import EmbedConfig


def run(data: DataConfig, cfg: EmbedConfig, prepared: Path, out_dir: Path, *,
        device: str = "auto") -> np.ndarray:
    """Decode every image of the prepared manifest once and embed it
    (pipeline.modality.image.embed), into out_dir; return (N, D)."""
    df = read_manifest(prepared)
    if df.empty:
        raise PipelineError(f"{prepared} lists no images: nothing to embed")
    done = embed_images(list(df["path"]), Path(data.root), cfg, resolve_device(device))
    found, sides, embeddings = done.found, done.sides, done.embeddings
    valid = [h is not None for h in found.hashes]
    embedfiles.write(out_dir, embeddings, EmbedMeta(
        ids=list(df["image_id"]), valid=valid, pixel_hash=found.hashes, error=found.errors,
        model=done.info, image_size=done.size, image_size_reason=done.reason,
        backbone_size=done.backbone_size, backbone_test_size=done.backbone_test_size,
        short_side_median=float(np.median(sides)) if sides else 0.0, notes=found.notes))
    embedfiles.write_signals(out_dir, found.pixel_signals)
    embedfiles.write_copies(out_dir, done.copies, done.copy_source, done.copy_kinds)
    print(f"embed: {sum(valid)} of {len(df)} images, dimension {embeddings.shape[1]}, "
          f"{len(done.copy_source)} calibration copies of {len(found.originals)} images")
    return embeddings


def run_texts(data: DataConfig, cfg: EmbedConfig, df: pd.DataFrame, out_dir: Path, *,
              device: str = "auto") -> np.ndarray:
    """The text project's pass (pipeline.modality.text.embed), in the same files; return (N, D)."""
    torch.manual_seed(0)
    found = embed_texts(df, Path(data.root), cfg, resolve_device(device))
    valid = [h is not None for h in found.hashes]
    embedfiles.write(out_dir, found.embeddings, EmbedMeta(
        ids=list(df["image_id"]), valid=valid, pixel_hash=found.hashes, error=found.errors,
        model=found.info, image_size=0, image_size_reason="", notes=found.notes,
        modality="text", signals=TEXT_SIGNALS, lengths=found.lengths,
        scripts=found.scripts))
    embedfiles.write_signals(out_dir, found.signals)
    embedfiles.write_copies(out_dir, found.copies, found.copy_source, found.copy_kinds)
    longest = max(found.lengths)
    print(f"embed: {sum(valid)} of {len(df)} texts, dimension {found.embeddings.shape[1]}, "
          f"{len(found.copy_source)} calibration copies of "
          f"{len(set(found.copy_source.tolist()))} texts; longest {longest:,} characters")
    return found.embeddings


def main() -> None:
    """Entry point of the DVC stage."""
    base, data, embed = load_sections("base", "data", "embed")
    assert isinstance(base, BaseConfig)
    pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    df = read_manifest(paths.PREPARED)
    modality, why = resolve_modality(data.modality, df) if not df.empty else ("image", "")
    with atomic_dir(paths.EMBED_DIR) as partial:  # the old folder stays whole until then
        if modality == "text":
            print(f"embed: texts (data.modality: {why})")
            run_texts(data, embed, df, partial, device=base.device)
        else:
            run(data, embed, paths.PREPARED, partial, device=base.device)


if __name__ == "__main__":
    run_stage("embed", main)
