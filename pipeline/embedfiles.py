"""The embed stage's file contract, read and written here only.

``embeddings.npy``: (N, D) float32, L2-normalised pooled features, zero rows for
unreadable images, row-aligned with the prepared manifest. ``meta.json``: the image ids,
which rows decoded (``valid``), each decoded image's pixel hash, each other one's reason
(``error``), the backbone and its input size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

EMBEDDINGS = "embeddings.npy"
META = "meta.json"


@dataclass(frozen=True)
class EmbedMeta:
    """``meta.json`` of the embed stage (lists row-aligned with the embeddings)."""

    ids: list[str]
    valid: list[bool]
    pixel_hash: list[str | None]  # None where the image did not decode
    error: list[str]  # "" where it did
    model: dict[str, Any]  # the backbone's description (library, arch, weights)
    image_size: int


def write(out_dir: Path, embeddings: np.ndarray, meta: EmbedMeta) -> None:
    """Write both files (key order fixed: the stage's output hash depends on it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / EMBEDDINGS, embeddings)
    (out_dir / META).write_text(json.dumps(
        {"ids": meta.ids, "valid": meta.valid, "pixel_hash": meta.pixel_hash,
         "error": meta.error, "model": meta.model, "image_size": meta.image_size}) + "\n")


def read_meta(embed_dir: Path) -> EmbedMeta:
    """The embed stage's ``meta.json``; a clear error when the stage has not run."""
    path = Path(embed_dir) / META
    if not path.exists():
        raise PipelineError(f"{path} not found: run the embed stage first (dvc repro)")
    raw = json.loads(path.read_text())
    return EmbedMeta(ids=raw["ids"], valid=raw["valid"], pixel_hash=raw["pixel_hash"],
                     error=raw["error"], model=raw.get("model", {}),
                     image_size=raw.get("image_size", 0))  # what clean and split need: ids..error


def read_aligned(embed_dir: Path, ids: list[str], *, source: Path
                 ) -> tuple[np.ndarray, EmbedMeta]:
    """(N, D) embeddings and meta of exactly these ids in this order (the manifest
    ``source`` the embed stage read); an error when the stage ran on other data."""
    meta = read_meta(embed_dir)
    if meta.ids != ids:
        raise PipelineError(f"{embed_dir} does not match {source}: rerun dvc repro")
    return np.load(Path(embed_dir) / EMBEDDINGS), meta


def read_rows(embed_dir: Path, ids: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """(N, D) float32 embeddings and N pixel hashes of these image ids (any subset, any
    order). Rows the embed stage could not decode have a zero embedding and no hash
    (None): they match nothing."""
    embeddings = np.load(Path(embed_dir) / EMBEDDINGS, mmap_mode="r")
    meta = read_meta(embed_dir)
    position = {image_id: i for i, image_id in enumerate(meta.ids)}
    missing = [i for i in ids if i not in position]
    if missing or len(meta.ids) != len(embeddings):
        raise PipelineError(f"{embed_dir} does not match the clean manifest (e.g. "
                            f"{missing[:3]} are not in it): rerun dvc repro")
    rows = np.array([position[i] for i in ids], dtype=np.int64)
    valid = np.array(meta.valid, dtype=bool)[rows]
    out = np.asarray(embeddings[rows], dtype=np.float32)
    out[~valid] = 0.0
    hashes = [meta.pixel_hash[r] if ok else None for r, ok in zip(rows, valid)]
    return out, hashes
