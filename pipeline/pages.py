"""Pieces of self-contained HTML pages: images embedded as data URIs, so a page opens
offline from any folder (clean's review page, split's leakage page, the report)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from pipeline.images import IMAGES
from pipeline.modality import ItemCodec, UnreadableItem

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
