"""Which modality a project's items are (``data.modality``), and a text item's text.

``auto`` decides from the prepared manifest: a ``text`` column (texts given inline in a
CSV or JSON Lines manifest) or files that are mostly ``.txt`` make a text project; files
that are mostly image suffixes an image project. A source that mixes both stops with one
line asking for ``data.modality``. Kept free of torch: prepare and every stage that
reads the decision import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import pandas as pd

from pipeline.contracts.manifest import resolve
from pipeline.core.errors import PipelineError
from pipeline.modality import plugins
from pipeline.modality.image.suffixes import IMAGE_SUFFIXES
from pipeline.modality.text.decoding import TEXT_SUFFIXES, UnreadableText, decode_text, read_text

MIXED = 0.1  # auto: a source with more than this share of each kind is mixed


def inline(df: pd.DataFrame) -> bool:
    """True when the manifest carries the texts themselves (a ``text`` column)."""
    return "text" in df.columns


def inline_texts(df: pd.DataFrame) -> dict[str, str]:
    """image id -> text of a manifest that carries its texts ({} when it does not)."""
    return dict(zip(df["image_id"], df["text"])) if inline(df) else {}


def resolve_modality(setting: str, df: pd.DataFrame) -> tuple[str, str]:
    """(``image`` | ``text`` | another modality's module, why) for ``data.modality`` and
    the prepared manifest."""
    if inline(df):
        if setting == "image":
            raise PipelineError("data.modality = image, but the manifest gives texts (a "
                                "text column): set data.modality: text or auto")
        return "text", "texts given in the manifest's text column"
    if setting not in ("auto", *plugins.BUILTIN):
        return setting, f"data.modality = {setting} ({plugins.load(setting).__file__})"
    if setting != "auto":
        return setting, f"data.modality = {setting}"
    suffixes = [PurePosixPath(p).suffix.lower() for p in df["path"]]
    texts = sum(s in TEXT_SUFFIXES for s in suffixes)
    images = sum(s in IMAGE_SUFFIXES for s in suffixes)
    n = max(len(suffixes), 1)
    if texts / n > MIXED and images / n > MIXED:
        raise PipelineError(f"the source mixes {texts} text files ({', '.join(TEXT_SUFFIXES)}) "
                            f"and {images} images: set data.modality to text or image (the "
                            f"other kind then become unreadable rows), or separate them")
    if texts > images:
        return "text", f"auto: {texts} of {len(suffixes)} files are texts"
    return "image", (f"auto: {images} of {len(suffixes)} files are images" if suffixes
                     else "auto: image")


def item_texts(df: pd.DataFrame, root: Path, rows: Sequence[int]
               ) -> list[tuple[str, str] | Exception]:
    """(text, decoding note) of each of ``rows``, from the manifest's text column or the
    file; the exception (:class:`pipeline.modality.text.decoding.UnreadableText`, OSError)
    where a row has none."""
    out: list[tuple[str, str] | Exception] = []
    for i in rows:
        try:
            if inline(df):
                out.append(decode_text(str(df["text"].iloc[i]).encode()))
            else:
                out.append(read_text(resolve(root, df["path"].iloc[i])))
        except (UnreadableText, OSError) as exc:
            out.append(exc)
    return out
