"""The cache's file contract, read and written here only: ``{split}_images.npy``
((N, S, S, 3) uint8), ``{split}_labels.npy`` ((N,) int64), ``train_view{k}_images.npy``
(K augmented copies of the train split) and ``meta.json`` (class names in index order,
image size, fit, views, image ids per split, row-aligned).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.files import save_npy, write_text

META = "meta.json"


def images_name(split: str, view: int | None = None) -> str:
    """File of a split's images; ``view`` k: the k-th pre-augmented copy."""
    return f"{split}_images.npy" if view is None else f"{split}_view{view}_images.npy"


def labels_name(split: str) -> str:
    """File of a split's (N,) int64 class indices."""
    return f"{split}_labels.npy"


@dataclass(frozen=True)
class CacheMeta:
    """``meta.json`` of the cache."""

    classes: list[str]  # class names in index order
    image_size: int  # pixels, square
    fit: str  # how a non-square image became square
    views: int  # K augmented copies of the train split
    ids: dict[str, list[str]]  # image ids per split, row-aligned with its arrays
    image_size_reason: str = ""  # what cache.image_size resolved to, and why
    profile: str = "photo"  # photo | small (pipeline.finetuning.autosize.data_profile)
    modality: str = "image"  # image | text
    # text: the tokenizer's settings (encoder, max_length, truncation, pad_id); rows of
    # {split}_images.npy are then (L,) int32 token ids
    text: dict[str, Any] | None = None

    def to_json(self) -> str:
        """The file's text (key order fixed: the cache's hash depends on it; an image
        cache's has no modality key, as before texts existed)."""
        more = {} if self.modality == "image" else {"modality": self.modality,
                                                   "text": self.text}
        return json.dumps({"classes": self.classes, "image_size": self.image_size,
                           "image_size_reason": self.image_size_reason,
                           "profile": self.profile,
                           "fit": self.fit, "views": self.views, **more, "ids": self.ids},
                          indent=1) + "\n"


def write_meta(out_dir: Path, meta: CacheMeta) -> None:
    """Write ``meta.json`` into the cache folder."""
    write_text(Path(out_dir) / META, meta.to_json())


def write_rows(out_dir: Path, split: str, rows: np.ndarray, labels: np.ndarray) -> None:
    """One split's (N, ...) rows and (N,) int64 labels, each file whole or not at all
    (a text cache's token ids; the cache stage streams an image cache's arrays)."""
    save_npy(Path(out_dir) / images_name(split), rows)
    save_npy(Path(out_dir) / labels_name(split), np.asarray(labels, dtype=np.int64))


def read_meta_text(cache_dir: Path) -> str:
    """``meta.json`` as written (a training checkpoint's fingerprint includes it)."""
    path = Path(cache_dir) / META
    if not path.exists():
        raise PipelineError(f"{path} not found: run the cache stage first (dvc repro)")
    return path.read_text()


def read_meta(cache_dir: Path) -> CacheMeta:
    """The cache's ``meta.json``; a clear error when the cache stage has not run."""
    raw: dict[str, Any] = json.loads(read_meta_text(cache_dir))
    return CacheMeta(classes=raw["classes"], image_size=raw["image_size"], fit=raw["fit"],
                     views=raw["views"], ids=raw["ids"],
                     image_size_reason=raw.get("image_size_reason", ""),
                     profile=raw.get("profile", "photo"),
                     modality=raw.get("modality", "image"), text=raw.get("text"))


class NpyRows:
    """Random access to the rows of an (N, ...) .npy file by positioned reads.

    Unlike a memory map, nothing stays mapped: rows read once live only in the OS page
    cache, so a process's resident memory does not grow with the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = header(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{path} is Fortran-ordered; the cache writes C order")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` ((B,) int) as a new (B, ...) array."""
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for j, i in enumerate(np.asarray(index, dtype=np.int64)):
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {i} out of range for {self.path} ({self.shape[0]} rows)")
            os.preadv(self._fd, [out[j]], self.offset + int(i) * self.row_bytes)
        return out

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


class JoinedRows:
    """Chosen rows of several :class:`NpyRows` files read as one (N, ...) array: row i is
    row ``rows[i]`` of file ``parts[source[i]]`` (positioned reads, as NpyRows)."""

    def __init__(self, parts: list[NpyRows | JoinedRows], source: np.ndarray,
                 rows: np.ndarray) -> None:
        self.parts, self.source, self.rows = parts, source, rows
        self.shape: tuple[int, ...] = (len(rows), *parts[0].shape[1:])
        self.dtype: np.dtype = parts[0].dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        """Rows at ``index`` ((B,) int) as a new (B, ...) array."""
        index = np.asarray(index, dtype=np.int64)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        for p, part in enumerate(self.parts):
            mine = np.flatnonzero(self.source[index] == p)
            if len(mine):
                out[mine] = part[self.rows[index[mine]]]
        return out


@dataclass(frozen=True)
class ArraySplit:
    """One cached split: (N, H, W, 3) uint8 images and (N,) int64 labels, row-aligned."""

    images: NpyRows | JoinedRows
    labels: np.ndarray
    ids: tuple[str, ...]


def load_split(cache_dir: Path, split: str, ids: list[str], *, view: int | None = None
               ) -> ArraySplit:
    """Open one split of the cache (read batch by batch, never loaded whole).

    ``view`` k picks the k-th pre-augmented copy of the train split instead of the plain
    resized images.
    """
    name = images_name(split, view)
    images = NpyRows(Path(cache_dir) / name)
    labels = np.load(Path(cache_dir) / labels_name(split))
    if len(images) != len(labels) or len(labels) != len(ids):
        raise ValueError(f"{cache_dir}: {name} has {len(images)} rows, labels {len(labels)}, "
                         f"ids {len(ids)}; rebuild the cache (dvc repro)")
    return ArraySplit(images, labels, tuple(ids))


def open_split(cache_dir: Path, meta: CacheMeta, split: str, *, view: int | None = None
               ) -> ArraySplit:
    """One split (or train view) of the cache, with its ids from ``meta``."""
    return load_split(cache_dir, split, meta.ids[split], view=view)


def train_views(cache_dir: Path, meta: CacheMeta) -> list[ArraySplit]:
    """The K augmented train views, or the plain train split when K is 0 (epoch e reads
    view e mod K)."""
    return [open_split(cache_dir, meta, "train", view=k) for k in range(meta.views)] or \
        [open_split(cache_dir, meta, "train")]


def bootstrap_rows(labels: np.ndarray, seed: int) -> np.ndarray:
    """A stratified bootstrap sample (bagging): from each class as many rows as it has,
    drawn with replacement from ``seed``; (N,) int64 row indices, sorted."""
    rng = np.random.default_rng(seed)
    rows = [rng.choice(members, size=len(members), replace=True)
            for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)


def take_rows(split: ArraySplit, rows: np.ndarray) -> ArraySplit:
    """Rows ``rows`` of one split (repeats allowed), read as one split."""
    return ArraySplit(JoinedRows([split.images], np.zeros(len(rows), np.int64), rows),
                      split.labels[rows], tuple(split.ids[i] for i in rows))


def fold_splits(cache_dir: Path, meta: CacheMeta, folds: dict[str, int], fold: int
                ) -> tuple[ArraySplit, ArraySplit]:
    """Cross-validation fold ``fold``: (the train and val rows of every other fold, the
    rows of this one), from the cache's train and val splits; ``folds`` maps image ids to
    their fold (the split manifest's ``fold`` column)."""
    parts = [open_split(cache_dir, meta, s) for s in ("train", "val")]
    source = np.concatenate([np.full(len(p.ids), i) for i, p in enumerate(parts)])
    rows = np.concatenate([np.arange(len(p.ids)) for p in parts])
    ids = [i for p in parts for i in p.ids]
    labels = np.concatenate([p.labels for p in parts])
    missing = [i for i in ids if i not in folds]
    if missing:
        raise PipelineError(f"{len(missing)} cached train/val images have no fold (e.g. "
                            f"{missing[0]}): rerun dvc repro")
    held = np.array([folds[i] == fold for i in ids])

    def take(mask: np.ndarray) -> ArraySplit:
        return ArraySplit(JoinedRows([p.images for p in parts], source[mask], rows[mask]),
                          labels[mask], tuple(np.array(ids, dtype=object)[mask]))
    return take(~held), take(held)
