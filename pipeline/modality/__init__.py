"""The seam for a second input modality: what the pipeline must know about its items.

Small interfaces, apart because different stages use them and DVC reruns follow imports:

- :class:`ItemCodec`, files to fixed-size arrays: decoding, a content hash for exact
  copies, fitting to the cache's size, thumbnails for the HTML pages, the file suffixes a
  folder source and the ``predict`` command accept. Used by prepare, embed, cache, the
  pages and prediction. Images: ``pipeline.modality.image.decoding``.
- :class:`BatchAdapter`, cached arrays to model input (normalised as the weights
  expect). Used by embed, the training loop, prediction and export (its example input).
- :class:`BatchAugment`, the cheap per-epoch training augmentation of a model-ready
  batch. Used by training only.
- :class:`ModelKind`, a modality's classifier: built, loaded from a model file, given its
  adapter and augmentation. Training, the model file, evaluation, export and prediction
  ask :mod:`pipeline.modality.models` for it. Images: ``pipeline.modality.image.model``;
  texts: ``pipeline.modality.text.model``.

Splitting, the leakage audit, the training loop and the metrics see only arrays, ids,
labels and these interfaces. Texts (``pipeline.modality.itemkinds`` and the
``pipeline.modality.text`` package) implement the adapter, augmentation and model kind;
their decoding gives strings, not arrays, so they read files through
:func:`pipeline.modality.itemkinds.item_texts` instead of a codec.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np

if TYPE_CHECKING:  # only for annotations: the codec side never needs torch
    import torch


class UnreadableItem(Exception):
    """A file that cannot be decoded as an item of its modality (the reason is the message)."""


class ItemCodec(Protocol):
    """Files of one modality to the fixed-size arrays the cache stores."""

    name: str  # "image"
    suffixes: tuple[str, ...]  # lower-case file suffixes, with the dot

    def decode(self, path: Path | BinaryIO, *, max_pixels: int) -> np.ndarray:
        """The item's array from a file or an open binary stream (an upload); raises
        :class:`UnreadableItem` (or a subclass)."""
        ...

    def content_hash(self, item: np.ndarray) -> str:
        """Equal for identical content (exact copies), whatever the file format."""
        ...

    def note(self, path: Path) -> str:
        """What decoding left out of a readable file (e.g. frames after the first), or ""."""
        ...

    def extent(self, path: Path) -> int:
        """The item's smaller dimension, read without decoding it (what ``auto`` sizes
        follow); raises :class:`UnreadableItem` when the file cannot tell."""
        ...

    def fit(self, item: np.ndarray, size: int, *, fit: str) -> np.ndarray:
        """The fixed-size array the cache stores."""
        ...

    def thumbnail(self, item: np.ndarray, size: int) -> bytes:
        """A small PNG for the review, leakage and report pages."""
        ...


class Rows(Protocol):
    """Cached rows read by index (an array, or the cache's positioned reads)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> np.ndarray: ...


class BatchAdapter(Protocol):
    """A batch of cached arrays to what the model takes."""

    def to_input(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Model input on ``device`` (normalised as the weights expect)."""
        ...

    def lengths(self, rows: Rows) -> np.ndarray | None:
        """(N,) lengths of cached rows whose model input varies in size (a text's tokens),
        so batches can group rows of similar length; None when every row has one size."""
        ...


class BatchAugment(Protocol):
    """The per-epoch training augmentation of a model-ready batch (random numbers from
    ``generator`` only, so a resumed run repeats them)."""

    def __call__(self, x: torch.Tensor, *, hflip: bool, shift: int,
                 generator: torch.Generator) -> torch.Tensor: ...


class ModelKind(Protocol):
    """How a modality's classifier is built, fed and augmented: what training, the model
    file, evaluation, export and prediction ask instead of assuming pixels
    (:mod:`pipeline.modality.models` finds the kind)."""

    name: str  # the cache's and the model meta's ``modality``
    noun: str  # its items in logs and pages: "images"
    augment: BatchAugment

    def create(self, cfg: Any, num_classes: int, *, pretrained: bool = True,
               verbose: bool = False) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
        """(model with a new head, its preprocessing, the weights' description) for the
        ``model`` section; ``pretrained=False`` to load trained weights over it."""
        ...

    def preprocessing(self, saved: dict[str, Any]) -> Any:
        """The preprocessing a model file's meta records, as :meth:`create` returns it."""
        ...

    def adapter(self, model: torch.nn.Module, prep: Any) -> BatchAdapter:
        """How cached rows become this model's input."""
        ...
