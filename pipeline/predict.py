"""Predictions outside the pipeline, with exactly the preprocessing of evaluation.

The preprocessing (image size, fit, mean, std) and class names come from the model's
saved metadata, never from the current params.yaml.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.engine import view_probabilities
from pipeline.errors import PipelineError
from pipeline.files import not_regular
from pipeline.images import IMAGES, UnreadableImage, decode_image, fit_image
from pipeline.inputs import ImageInput, Preprocessing
from pipeline.modelfile import load_trained
from pipeline.seeding import resolve_device

TTA = ("none", "flip", "crops")  # test-time augmentation, as evaluate.tta (engine.tta_views)


@dataclass
class Predictor:
    """A trained model with its preprocessing; ``probabilities`` is thread-unsafe."""

    model: torch.nn.Module
    prep: Preprocessing
    meta: dict[str, Any]
    device: torch.device

    @classmethod
    def load(cls, path: Path, *, device: str = "auto") -> Predictor:
        """Load models/model.pt (weights_only) onto ``device`` (auto|cpu|cuda); a FIFO,
        device or broken link is never opened (reading a FIFO would block)."""
        if Path(path).exists() or Path(path).is_symlink():  # a missing file: train first
            problem = not_regular(path)
            if problem:
                raise PipelineError(f"{path}: {problem}")
        model, prep, meta = load_trained(path)
        dev = resolve_device(device)
        model.to(dev).to(memory_format=torch.channels_last).eval()
        return cls(model, prep, meta, dev)

    @property
    def classes(self) -> list[str]:
        """Class names in the model's output order."""
        return list(self.meta["classes"])

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 decoded image -> (S, S, 3) uint8, as the cache stage does."""
        prep = self.meta["preprocessing"]
        return fit_image(pixels, prep["image_size"], fit=prep["fit"])

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray, *, tta: str = "none") -> np.ndarray:
        """(B, S, S, 3) uint8 prepared images -> (B, C) float64 probabilities, averaged
        over the test-time views of ``tta`` (none | flip | crops, as evaluate.tta)."""
        if tta not in TTA:
            raise PipelineError(f"tta = {tta!r}: choose one of {', '.join(TTA)}")
        # a writable contiguous copy only when needed (torch warns on read-only arrays)
        pixels = np.require(images, requirements=["C", "W"])
        x = ImageInput(self.prep).to_input(torch.from_numpy(pixels), self.device)
        return view_probabilities(self.model, x, tta, device=self.device)


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (label, probability) pairs of each row, best first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def list_inputs(inputs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(files to predict, files skipped): the files as given, and under folders
    (recursive, sorted) every entry with an image suffix (:data:`IMAGES.suffixes`), a
    FIFO, device or broken link among them too (its row then says what it is, as
    prepare's unreadable rows do); every other file under the folders is skipped."""
    files: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        if not item.is_dir():
            files.append(item)
            continue
        for path in sorted(item.rglob("*")):
            if path.is_dir():
                continue
            (files if path.suffix.lower() in IMAGES.suffixes else skipped).append(path)
    return files, skipped


def expand(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, and image files under folders (recursive), sorted
    (:func:`list_inputs` without the skipped files)."""
    return list_inputs(inputs)[0]


def predict_files(predictor: Predictor, files: Sequence[Path], *, batch_size: int,
                  max_pixels: int, tta: str = "none"
                  ) -> Iterator[tuple[Path, np.ndarray | None, str]]:
    """(path, probabilities or None, error) per file, in order (averaged over the
    test-time views of ``tta``); unreadable files get their reason and the rest still run."""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        prepared: list[np.ndarray] = []
        errors: list[str] = []
        for path in chunk:
            try:
                prepared.append(predictor.prepare(decode_image(path, max_pixels=max_pixels)))
                errors.append("")
            except UnreadableImage as exc:
                errors.append(str(exc))
        probs = iter(predictor.probabilities(np.stack(prepared), tta=tta) if prepared else [])
        for path, error in zip(chunk, errors):
            yield path, (None if error else next(probs)), error
