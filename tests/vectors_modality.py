"""A second modality defined only here, for tests: fixed-length numeric vectors, one per
``.npy`` file. It plugs into the pipeline as ``data.modality: vectors_modality``
(pipeline.modality.plugins) with its own codec, batch adapter, model and one near-copy
signal (the unit-length vector), and touches no module of the pipeline.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from pipeline.contracts.embedfiles import EmbedMeta, EmbedOutput
from pipeline.contracts.manifest import resolve
from pipeline.finetuning.backbones import HeadSpec, new_head
from pipeline.modality import UnreadableItem

NAME = "vectors_modality"  # data.modality, and what the metas record
DIM = 8  # every vector's length


class VectorCodec:
    """``.npy`` files of DIM finite numbers (:class:`pipeline.modality.ItemCodec`)."""

    name = NAME
    suffixes = (".npy",)

    def decode(self, path: Path | BinaryIO, *, max_pixels: int) -> np.ndarray:
        try:
            item = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise UnreadableItem(f"not a .npy array ({exc})") from None
        if item.shape != (DIM,) or not np.isfinite(item).all():
            raise UnreadableItem(f"not {DIM} finite numbers (shape {item.shape})")
        return item.astype(np.float32)

    def content_hash(self, item: np.ndarray) -> str:
        return hashlib.sha256(item.tobytes()).hexdigest()

    def note(self, path: Path) -> str:
        return ""

    def extent(self, path: Path) -> int:
        return DIM

    def fit(self, item: np.ndarray, size: int, *, fit: str) -> np.ndarray:
        return item  # every vector has the one length

    def thumbnail(self, item: np.ndarray, size: int) -> bytes:
        """The vector as a strip of grey cells, darker for larger values."""
        span = float(np.ptp(item)) or 1.0
        row = (255 * (1 - (item - item.min()) / span)).astype(np.uint8)
        strip = Image.fromarray(np.repeat(row[None, :], 4, axis=0)).resize((8 * DIM, 16))
        out = io.BytesIO()
        strip.save(out, format="PNG")
        return out.getvalue()


CODEC = VectorCodec()


def unit(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the near-copy signal)."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def embed(df: pd.DataFrame, root: Path, cfg: Any, device: torch.device) -> EmbedOutput:
    """The embed stage's pass: each vector read once, its unit form as the embedding (the
    one signal), and noisy copies of a seeded sample to calibrate the near-copy rule."""
    n = len(df)
    vectors = np.zeros((n, DIM), np.float32)
    hashes: list[str | None] = [None] * n
    errors = [""] * n
    for i, rel in enumerate(df["path"]):
        try:
            vectors[i] = CODEC.decode(resolve(root, rel), max_pixels=0)
            hashes[i] = CODEC.content_hash(vectors[i])
        except UnreadableItem as exc:
            errors[i] = str(exc)
    valid = [h is not None for h in hashes]
    embeddings = np.where(np.array(valid)[:, None], unit(vectors), 0).astype(np.float32)
    rng = np.random.default_rng(0)
    source = rng.permutation(np.flatnonzero(valid))[:cfg.calibration_sample]
    noisy = vectors[source] + rng.normal(0, 0.01, (len(source), DIM)).astype(np.float32)
    meta = EmbedMeta(ids=list(df["image_id"]), valid=valid, pixel_hash=hashes, error=errors,
                     model={"library": NAME, "arch": "identity"}, image_size=0,
                     notes=[""] * n, modality=NAME, signals=("embedding",))
    return EmbedOutput(embeddings, meta, {}, {"embedding": unit(noisy)},
                       source.astype(np.int64), np.array(["noise"] * len(source)),
                       f"embed: {sum(valid)} of {n} vectors")


class VectorNet(nn.Module):
    """A small MLP: a hidden layer (its one layer group) and the pipeline's head."""

    def __init__(self, num_classes: int, drop_rate: float, head: Any) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(DIM, 16), nn.ReLU())
        self.head = new_head(16, num_classes, drop_rate, head or HeadSpec())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class VectorInput:
    """Cached (B, DIM) float32 rows as they are (:class:`pipeline.modality.BatchAdapter`)."""

    def to_input(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        return batch.float().to(device)

    def lengths(self, rows: Any) -> None:
        return None


def no_augment(x: torch.Tensor, *, hflip: bool, shift: int,
               generator: torch.Generator) -> torch.Tensor:
    return x


class VectorModels:
    """:class:`pipeline.modality.ModelKind` of the vectors."""

    name = NAME
    noun = "vectors"
    augment = staticmethod(no_augment)

    def create(self, cfg: Any, num_classes: int, *, pretrained: bool = True,
               verbose: bool = False) -> tuple[nn.Module, None, dict[str, Any]]:
        model = VectorNet(num_classes, cfg.drop_rate, getattr(cfg, "head", None))
        return model, None, {"library": NAME, "arch": "VectorNet", "weights": "none"}

    def preprocessing(self, saved: dict[str, Any]) -> None:
        return None

    def adapter(self, model: nn.Module, prep: Any) -> VectorInput:
        return VectorInput()


MODEL = VectorModels()
