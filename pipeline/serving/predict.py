"""Predictions outside the pipeline, with exactly the preprocessing of evaluation.

The preprocessing (image size, fit, mean, std) and class names come from the model's
saved metadata, never from the current params.yaml.

A text model reads ``.txt`` files (folders: every ``.txt`` under them), a ``.csv`` with
a ``text`` column or a ``.jsonl`` file with a ``text`` field per line (each optionally
with an ``id``), tokenized as the cache stage did (the encoder's tokenizer, the model's
max length and truncation). A table's row is named ``file.csv#<id>``, or
``file.csv#<row>`` (counted from 1, the header not counted; a .jsonl's line number)
without an id.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.contracts.modelfile import is_text, load_trained, text_tokenizer
from pipeline.contracts.sources import jsonl_objects
from pipeline.core.errors import PipelineError
from pipeline.core.files import not_regular
from pipeline.core.seeding import resolve_device
from pipeline.finetuning.engine import view_probabilities
from pipeline.modality import UnreadableItem
from pipeline.modality.image.decoding import IMAGES
from pipeline.modality.models import meta_modality, model_input
from pipeline.modality.text.decoding import TEXT_SUFFIXES, UnreadableText, decode_text, read_text
from pipeline.modality.text.model import TokenInput, encode

TTA = ("none", "flip", "crops")  # test-time augmentation, as evaluate.tta (engine.tta_views)
TABLES = (".csv", ".jsonl")  # a text model's files of many texts


@dataclass
class Predictor:
    """A trained model with its preprocessing (a text model's tokenizer);
    ``probabilities`` and ``text_probabilities`` are thread-unsafe."""

    model: torch.nn.Module
    prep: Any  # the model kind's preprocessing (an image model's mean and std)
    meta: dict[str, Any]
    device: torch.device
    tokenizer: Any = None  # a text model's; None for an image model

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
        return cls(model, prep, meta, dev, text_tokenizer(meta) if is_text(meta) else None)

    @property
    def classes(self) -> list[str]:
        """Class names in the model's output order."""
        return list(self.meta["classes"])

    @property
    def modality(self) -> str:
        """What the model classifies: ``image``, ``text`` or another modality's module."""
        return meta_modality(self.meta)

    @torch.inference_mode()
    def text_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (B, C) float64 probabilities, tokenized as the cache stage did."""
        prep = self.meta["preprocessing"]
        ids = encode(self.tokenizer, texts, prep["max_length"], truncation=prep["truncation"])
        x = TokenInput(prep["pad_id"]).to_input(torch.from_numpy(ids), self.device)
        return view_probabilities(self.model, x, "none", device=self.device)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 decoded image -> (S, S, 3) uint8, as the cache stage does."""
        prep = self.meta["preprocessing"]
        return IMAGES.fit(pixels, prep["image_size"], fit=prep["fit"])

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray, *, tta: str = "none") -> np.ndarray:
        """(B, S, S, 3) uint8 prepared images -> (B, C) float64 probabilities, averaged
        over the test-time views of ``tta`` (none | flip | crops, as evaluate.tta)."""
        if tta not in TTA:
            raise PipelineError(f"tta = {tta!r}: choose one of {', '.join(TTA)}")
        # a writable contiguous copy only when needed (torch warns on read-only arrays)
        pixels = np.require(images, requirements=["C", "W"])
        x = model_input(self.model, self.prep, self.modality).to_input(torch.from_numpy(pixels),
                                                                self.device)
        return view_probabilities(self.model, x, tta, device=self.device)


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (label, probability) pairs of each row, best first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


@dataclass(frozen=True)
class TextRow:
    """One text of a .csv or .jsonl input: its name (``file.csv#<id or row>``, also its
    ``str``), its text, or why it has none."""

    name: str
    text: str
    error: str = ""

    def __str__(self) -> str:
        return self.name


Item = Path | TextRow  # what predict_files classifies: a file, or a table's row


def input_suffixes(modality: str | None = None) -> tuple[str, ...]:
    """The suffixes of the files a folder given to a model of ``modality`` stands for."""
    return TEXT_SUFFIXES if modality == "text" else IMAGES.suffixes


def list_inputs(inputs: Sequence[Path], *, modality: str | None = None
                ) -> tuple[list[Item], list[Path]]:
    """(items to predict, files skipped): the files as given (a text model's .csv and
    .jsonl as their rows, :func:`table_rows`), and under folders (recursive, sorted)
    every entry with a suffix of :func:`input_suffixes`, a FIFO, device or broken link
    among them too (its row then says what it is, as prepare's unreadable rows do);
    every other file under the folders is skipped. With the model's ``modality``
    (:attr:`Predictor.modality`), an image given to a text model, or a text input given
    to an image model, is a :class:`PipelineError`; without, images are listed."""
    files: list[Item] = []
    skipped: list[Path] = []
    for item in inputs:
        if not item.is_dir():
            files.extend(given_file(item, modality))
            continue
        for path in sorted(item.rglob("*")):
            if path.is_dir():
                continue
            (files if path.suffix.lower() in input_suffixes(modality) else skipped).append(path)
    return files, skipped


def given_file(path: Path, modality: str | None) -> list[Item]:
    """A file named on the command line: itself, or a table's rows for a text model;
    one clear line when it is of the other modality."""
    suffix = path.suffix.lower()
    if modality == "text" and suffix in IMAGES.suffixes:
        raise PipelineError(f"{path} is an image and the model classifies texts: give "
                            f"{'/'.join(TEXT_SUFFIXES)} files, folders of them, a .csv with a "
                            f"text column or a .jsonl file with a text field")
    if modality == "image" and suffix in TEXT_SUFFIXES + TABLES:
        raise PipelineError(f"{path} is a text input and the model classifies images: give "
                            f"image files or folders of them")
    return list(table_rows(path)) if modality == "text" and suffix in TABLES else [path]


def table_rows(path: Path) -> Iterator[TextRow]:
    """The texts of a .csv (a ``text`` column, optionally ``id``) or a .jsonl file (a
    ``text`` field per line, optionally ``id``; blank lines left out); a row without a
    usable text gets the reason. A file that is no table of texts is a PipelineError."""
    if problem := not_regular(path):
        raise PipelineError(f"{path}: {problem}")
    try:
        content = read_text(path)[0]
    except UnreadableText as exc:
        raise PipelineError(f"{path}: {exc}") from None
    records = (csv_records(path, content) if path.suffix.lower() == ".csv"
               else jsonl_objects(content.splitlines()))
    for number, record in records:
        if isinstance(record, str):
            yield TextRow(f"{path}#{number}", "", record)
            continue
        key = record.get("id")
        name = f"{path}#{number if key is None or key == '' else key}"
        text = record.get("text")
        if not isinstance(text, str):
            yield TextRow(name, "", "no text" if text is None else "text is not a string")
            continue
        problem = text_problem(text)
        yield TextRow(name, "" if problem else text, problem)


def csv_records(path: Path, content: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) of a CSV with a ``text`` column."""
    reader = csv.DictReader(io.StringIO(content, newline=""))
    if "text" not in (reader.fieldnames or []):
        raise PipelineError(f"{path}: no text column (its header: "
                            f"{', '.join(reader.fieldnames or []) or 'none'})")
    try:
        yield from enumerate(reader, 1)
    except csv.Error as exc:
        raise PipelineError(f"{path}: line {reader.line_num}: {exc}") from None


def text_problem(text: str) -> str:
    """Why a given text cannot be classified ("" when it can): the rules of text files
    (:func:`pipeline.modality.text.decoding.decode_text`: empty, whitespace only, NUL
    bytes, binary)."""
    try:
        decode_text(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid Unicode (a lone surrogate)"
    except UnreadableText as exc:
        return "empty text" if str(exc) == "empty file" else str(exc)
    return ""


def expand(inputs: Sequence[Path]) -> list[Item]:
    """Files as given, and image files under folders (recursive), sorted
    (:func:`list_inputs` without the skipped files)."""
    return list_inputs(inputs)[0]


def predict_files(predictor: Predictor, files: Sequence[Any], *, batch_size: int,
                  max_pixels: int, tta: str = "none"
                  ) -> Iterator[tuple[Item, np.ndarray | None, str]]:
    """(path, probabilities or None, error) per file, in order (averaged over the
    test-time views of ``tta``); unreadable files get their reason and the rest still run.
    A text model's items are :func:`predict_texts`'."""
    if predictor.modality == "text":
        yield from predict_texts(predictor, files, batch_size=batch_size, tta=tta)
        return
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        prepared: list[np.ndarray] = []
        errors: list[str] = []
        for path in chunk:
            try:
                prepared.append(predictor.prepare(IMAGES.decode(path, max_pixels=max_pixels)))
                errors.append("")
            except UnreadableItem as exc:
                errors.append(str(exc))
        probs = iter(predictor.probabilities(np.stack(prepared), tta=tta) if prepared else [])
        for path, error in zip(chunk, errors):
            yield path, (None if error else next(probs)), error


def predict_texts(predictor: Predictor, items: Sequence[Item], *, batch_size: int,
                  tta: str = "none") -> Iterator[tuple[Item, np.ndarray | None, str]]:
    """(item, probabilities or None, error) per .txt file or table row, in order; a file
    that holds no text (:func:`pipeline.modality.text.decoding.read_text`) or a row without a usable
    text gets its reason and the rest still run."""
    if tta != "none":
        raise PipelineError(f"tta = {tta!r}: test-time augmentation is for images; a text "
                            f"model takes none")
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        texts: list[str] = []
        errors: list[str] = []
        for item in chunk:
            text, error = item_text(item)
            errors.append(error)
            if not error:
                texts.append(text)
        probs = iter(predictor.text_probabilities(texts) if texts else [])
        for item, error in zip(chunk, errors):
            yield item, (None if error else next(probs)), error


def item_text(item: Item) -> tuple[str, str]:
    """(text, "") of a text file or table row, or ("", why it has none); a FIFO or
    device is never opened."""
    if isinstance(item, TextRow):
        return item.text, item.error
    if problem := not_regular(item):
        return "", problem
    try:
        return read_text(item)[0], ""
    except UnreadableText as exc:
        return "", str(exc)
