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

from pipeline.contracts import embedfiles
from pipeline.contracts.embedfiles import EmbedOutput
from pipeline.contracts.manifest import read_manifest
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.core.files import atomic_dir
from pipeline.core.seeding import pin_cpu, resolve_device
from pipeline.modality import plugins
from pipeline.modality.image.embed import embed_images
from pipeline.modality.itemkinds import resolve_modality
from pipeline.modality.text.embed import embed_texts
from pipeline.params.base import BaseConfig
from pipeline.params.data import DataConfig
from pipeline.params.embed import EmbedConfig

PASSES = {"image": embed_images, "text": embed_texts}  # each modality's pass


def run(data: DataConfig, cfg: EmbedConfig, prepared: Path, out_dir: Path, *,
        device: str = "auto") -> np.ndarray:
    """Decode every image of the prepared manifest once and embed it
    (pipeline.modality.image.embed), into out_dir; return (N, D)."""
    df = read_prepared(prepared)
    return write(embed_images(df, Path(data.root), cfg, resolve_device(device)), out_dir)


def run_texts(data: DataConfig, cfg: EmbedConfig, df: pd.DataFrame, out_dir: Path, *,
              device: str = "auto") -> np.ndarray:
    """The text project's pass (pipeline.modality.text.embed), in the same files; return (N, D)."""
    return write(embed_texts(df, Path(data.root), cfg, resolve_device(device)), out_dir)


def read_prepared(prepared: Path) -> pd.DataFrame:
    """The prepared manifest; one line when it lists nothing."""
    df = read_manifest(prepared)
    if df.empty:
        raise PipelineError(f"{prepared} lists no images: nothing to embed")
    return df


def write(out: EmbedOutput, out_dir: Path) -> np.ndarray:
    """Write what a modality's pass found; return its (N, D) embeddings."""
    embedfiles.write_all(out_dir, out)
    print(out.summary)
    return out.embeddings


def main() -> None:
    """Entry point of the DVC stage."""
    base, data, embed = load_sections("base", "data", "embed")
    assert isinstance(base, BaseConfig)
    pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    df = read_prepared(paths.PREPARED)
    modality, why = resolve_modality(data.modality, df)
    if modality != "image":
        print(f"embed: {modality} (data.modality: {why})")
    embed_pass = PASSES[modality] if modality in PASSES else plugins.load(modality).embed
    with atomic_dir(paths.EMBED_DIR) as partial:  # the old folder stays whole until then
        write(embed_pass(df, Path(data.root), embed, resolve_device(base.device)), partial)


if __name__ == "__main__":
    run_stage("embed", main)
