"""Pieces of self-contained HTML pages: images embedded as data URIs, so a page opens
offline from any folder (clean's review page, split's leakage page, the report); texts
shown as their first characters where images show thumbnails."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline.modality import ItemCodec, UnreadableItem, plugins
from pipeline.modality.image.decoding import IMAGES
from pipeline.modality.text.decoding import read_text

# Thumbnails never decode larger images (decompression bombs): pixels.
THUMB_MAX_PIXELS = 1 << 26


def img_tag(data: bytes, alt: str, width: int | None = None) -> str:
    """An <img> with the PNG embedded as a data URI."""
    size = f' width="{width}"' if width else ""
    return (f'<img alt="{html.escape(alt)}"{size} '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def thumbnail_tag(path: Path, alt: str, *, size: int = 96, codec: ItemCodec = IMAGES) -> str:
    """An <img> thumbnail (longer side at most ``size`` pixels) of an image file, or a
    short note saying why the file cannot be shown."""
    try:
        pixels = codec.decode(path, max_pixels=THUMB_MAX_PIXELS)
    except UnreadableItem as exc:
        return f"<div>unreadable: {html.escape(str(exc))}</div>"
    return img_tag(codec.thumbnail(pixels, size), alt)


SNIPPET = 320  # characters of a text shown where an image shows its thumbnail
SNIPPET_STYLE = (".snip{font-size:12px;white-space:pre-wrap;max-height:12em;overflow:hidden;"
                 "background:#f6f6f6;padding:4px;text-align:left}")


def snippet_tag(text: str, *, limit: int = SNIPPET) -> str:
    """A text's first ``limit`` characters, escaped, with its length when cut."""
    cut = text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
    return f'<div class="snip">{html.escape(cut)}</div>'


def preview_tag(path: Path, alt: str, *, modality: str = "image", text: str | None = None,
                size: int = 96) -> str:
    """What a page shows of an item: an image's thumbnail, or a text's first characters
    (``text`` when the manifest gives it inline, else read from ``path``)."""
    if modality == "image":
        return thumbnail_tag(path, alt, size=size)
    if modality != "text":  # another modality's codec draws it
        return thumbnail_tag(path, alt, size=size, codec=plugins.load(modality).CODEC)
    if text is None:
        try:
            text, _ = read_text(path)
        except UnreadableItem as exc:
            return f"<div>unreadable: {html.escape(str(exc))}</div>"
    return snippet_tag(text) if text.strip() else "<div>unreadable: empty text</div>"
