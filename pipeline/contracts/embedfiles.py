"""The embed stage's file contract, read and written here only.

``embeddings.npy``: (N, D) float32, L2-normalised pooled features, zero rows for
unreadable images, row-aligned with the prepared manifest. ``meta.json``: the image ids,
which rows decoded (``valid``), each decoded image's pixel hash, each other one's reason
(``error``), the backbone and its input size (``image_size``, and
``image_size_reason``: what ``auto`` resolved to and why), the backbone's pretrained
input size and the median short side of a sample of the images (the cache stage's
``auto`` size resolves from these two), and ``notes``: what decoding left out of a
readable image ("" for most; the frame count of an animated or multi-page file).

Pixel signals for near-copy detection (:mod:`pipeline.dataquality.calibrate`), row-aligned too:
``thumbnails.npy`` ((N, 256) float32), ``phash.npy`` ((N, 64) float32) and
``aligned.npy`` ((N, 48, 64) float32 views, :func:`pipeline.modality.image.signals.aligned_views`)
and ``tiny.npy`` ((N, 258) uint8: height, width and grey pixels of images no larger than
16 px, :func:`pipeline.modality.image.signals.tiny_pixels`, read back as the copy model with the
aligned views), zero for unreadable images. Calibration copies (synthetic near copies of
a seeded sample): ``copies_{embedding,thumbnail,phash,aligned,copy_model}.npy``
((M, ...) each) and ``copies.json`` (source row and kind of each copy).

Texts (``modality: text`` in meta.json, which then also names its ``signals`` and each
text's length in characters): the encoder's embeddings, ``shingles.npy`` ((N, 2048)
float32 word-shingle rows, :func:`pipeline.modality.text.signals.shingle_vectors`) and the
calibration copies of both; ``pixel_hash`` is the normalised text's sha256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.files import save_npy, write_text

EMBEDDINGS = "embeddings.npy"
META = "meta.json"
SIGNALS = ("embedding", "thumbnail", "phash", "aligned", "copy_model")  # Calibration order
_SIGNAL_FILES = {"thumbnail": "thumbnails.npy", "phash": "phash.npy",
                 "aligned": "aligned.npy", "copy_model": "tiny.npy",
                 "shingles": "shingles.npy"}  # the last: texts' word shingles
COPIES = "copies.json"


@dataclass(frozen=True)
class EmbedMeta:
    """``meta.json`` of the embed stage (lists row-aligned with the embeddings)."""

    ids: list[str]
    valid: list[bool]
    pixel_hash: list[str | None]  # None where the image did not decode
    error: list[str]  # "" where it did
    model: dict[str, Any]  # the backbone's description (library, arch, weights)
    image_size: int
    image_size_reason: str = ""  # what embed.image_size resolved to, and why
    backbone_size: int = 0  # pixels: the backbone's pretrained input size
    backbone_test_size: int = 0  # pixels: its test size (pipeline.finetuning.autosize)
    short_side_median: float = 0.0  # pixels: of a seeded sample of the decoded images
    notes: list[str] = field(default_factory=list)  # "" where decoding left nothing out
    modality: str = "image"  # or "text" (data.modality, resolved)
    signals: tuple[str, ...] = SIGNALS  # the near-copy signals stored, in rule order
    lengths: list[int] = field(default_factory=list)  # texts: characters of each
    scripts: list[str] = field(default_factory=list)  # texts: the script of each


@dataclass
class EmbedOutput:
    """What a modality's embed pass hands the embed stage to write, row-aligned with the
    prepared manifest (:func:`write_all`)."""

    embeddings: np.ndarray  # (N, D) float32 unit rows, zero where unreadable
    meta: EmbedMeta
    signals: dict[str, np.ndarray]  # the near-copy signals besides the embedding
    copies: dict[str, np.ndarray]  # the calibration copies, per signal
    copy_source: np.ndarray  # (M,) row of each copy's original
    copy_kinds: np.ndarray  # (M,) kind of each copy
    summary: str  # the stage's closing line


def write_all(out_dir: Path, out: EmbedOutput) -> None:
    """Every file of the embed stage (:func:`write`, :func:`write_signals`,
    :func:`write_copies`)."""
    write(out_dir, out.embeddings, out.meta)
    write_signals(out_dir, out.signals)
    write_copies(out_dir, out.copies, out.copy_source, out.copy_kinds)


def signal_names(embed_dir: Path) -> tuple[str, ...]:
    """The near-copy signals the embed stage stored (the calibrated rule's order)."""
    return read_meta(embed_dir).signals


def write(out_dir: Path, embeddings: np.ndarray, meta: EmbedMeta) -> None:
    """Write both files (key order fixed: the stage's output hash depends on it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_npy(out_dir / EMBEDDINGS, embeddings)
    write_text(out_dir / META, json.dumps(
        {"ids": meta.ids, "valid": meta.valid, "pixel_hash": meta.pixel_hash,
         "error": meta.error, "model": meta.model, "image_size": meta.image_size,
         "image_size_reason": meta.image_size_reason, "backbone_size": meta.backbone_size,
         "backbone_test_size": meta.backbone_test_size,
         "short_side_median": meta.short_side_median, "notes": meta.notes}
        | ({} if meta.modality == "image" else {  # an image meta.json stays as it was
            "modality": meta.modality, "signals": list(meta.signals),
            "lengths": meta.lengths, "scripts": meta.scripts})) + "\n")


def read_meta(embed_dir: Path) -> EmbedMeta:
    """The embed stage's ``meta.json``; a clear error when the stage has not run."""
    path = Path(embed_dir) / META
    if not path.exists():
        raise PipelineError(f"{path} not found: run the embed stage first (dvc repro)")
    raw = json.loads(path.read_text())
    return EmbedMeta(ids=raw["ids"], valid=raw["valid"], pixel_hash=raw["pixel_hash"],
                     error=raw["error"], model=raw.get("model", {}),
                     image_size=raw.get("image_size", 0),
                     image_size_reason=raw.get("image_size_reason", ""),
                     backbone_size=raw.get("backbone_size", 0),
                     backbone_test_size=raw.get("backbone_test_size", 0),
                     short_side_median=raw.get("short_side_median", 0.0),
                     notes=raw.get("notes", [""] * len(raw["ids"])),
                     modality=raw.get("modality", "image"),
                     signals=tuple(raw.get("signals", SIGNALS)),
                     lengths=raw.get("lengths", []), scripts=raw.get("scripts", []))


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


def _stored(name: str, values: np.ndarray) -> np.ndarray:
    """A signal as stored: float32, the copy model's packed pixels uint8."""
    return values.astype(np.uint8 if name == "copy_model" else np.float32)


def write_signals(out_dir: Path, signals: dict[str, np.ndarray]) -> None:
    """The near-copy signals besides the embedding (images: every name of
    :data:`SIGNALS` but the embedding; texts: the shingles), row-aligned with the
    embeddings."""
    for name, values in signals.items():
        save_npy(Path(out_dir) / _SIGNAL_FILES[name], _stored(name, values))


def write_copies(out_dir: Path, signals: dict[str, np.ndarray], source: np.ndarray,
                 kinds: np.ndarray) -> None:
    """The calibration copies: (M, D) per signal (the embedding and those of
    :func:`write_signals`), each copy's source row (in the embeddings) and kind."""
    for name in signals:
        save_npy(Path(out_dir) / f"copies_{name}.npy", _stored(name, signals[name]))
    write_text(Path(out_dir) / COPIES, json.dumps(
        {"source": [int(i) for i in source], "kind": [str(k) for k in kinds]}) + "\n")


def _signal_file(embed_dir: Path, name: str) -> Path:
    path = Path(embed_dir) / (_SIGNAL_FILES.get(name) or EMBEDDINGS)
    if not path.exists():
        raise PipelineError(f"{path} not found: rerun the embed stage (dvc repro)")
    return path


def read_signals(embed_dir: Path, ids: list[str] | None = None,
                 names: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """Every signal the stage stored (:func:`signal_names`; images :data:`SIGNALS`), or
    those of ``names``, as
    stored ((N, D_s) or (N, V, D_s) float32, unit or zero rows; the copy model's (N, 258)
    uint8 pixels: wrap them with :func:`pipeline.modality.image.signals.as_signals`), for all rows
    (``ids`` None) or these image ids in this order; undecoded rows are zero (match
    nothing). Kept free of :mod:`pipeline.dataquality.calibrate`, so that the stages that read only
    the meta do not depend on it."""
    meta = read_meta(embed_dir)
    if ids is None:
        rows = np.arange(len(meta.ids))
    else:
        position = {image_id: i for i, image_id in enumerate(meta.ids)}
        if any(i not in position for i in ids):
            raise PipelineError(f"{embed_dir} does not match the manifest: rerun dvc repro")
        rows = np.array([position[i] for i in ids], dtype=np.int64)
    valid = np.array(meta.valid, dtype=bool)[rows]
    out = []
    for name in meta.signals if names is None else names:
        values = np.array(np.load(_signal_file(embed_dir, name), mmap_mode="r")[rows])
        values[~valid] = 0
        out.append(values)
    return out


def read_copies(embed_dir: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The calibration copies: (M, D_s) per signal of :func:`signal_names`, (M,) source rows,
    (M,) kinds."""
    path = Path(embed_dir) / COPIES
    if not path.exists():
        raise PipelineError(f"{path} not found: rerun the embed stage (dvc repro)")
    raw = json.loads(path.read_text())
    signals = [np.load(Path(embed_dir) / f"copies_{name}.npy")
               for name in read_meta(embed_dir).signals]
    return (signals, np.asarray(raw["source"], dtype=np.int64),
            np.asarray(raw["kind"], dtype=object))
