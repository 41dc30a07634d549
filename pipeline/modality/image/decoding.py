"""Image decoding, hashing and resizing: pure functions, the same rules in every stage."""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.core import files
from pipeline.modality import UnreadableItem
from pipeline.modality.image.suffixes import IMAGE_SUFFIXES

# Broken files must fail, never train on half an image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class UnreadableImage(UnreadableItem):
    """The file cannot be decoded into an image; ``str(exc)`` is the reason."""


def open_regular(path: Path | str) -> BinaryIO:
    """:func:`pipeline.core.files.open_regular`, its refusals raised as :class:`UnreadableImage`."""
    try:
        return files.open_regular(path)
    except UnreadableItem as exc:
        raise UnreadableImage(str(exc)) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to (H, W, 3) uint8 RGB, deterministically."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: keep the top 8 of 16 bits.
        grey = np.asarray(img, dtype=np.int64)
        grey = np.clip(grey, 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels are composited on white, as a viewer shows them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_image(path: Path | BinaryIO, *, max_pixels: int) -> np.ndarray:
    """Decode an image file (or file object) to (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises :class:`UnreadableImage` with the reason for missing, empty, truncated,
    corrupt or non-image files, for what is no regular file (:func:`open_regular`: never
    opened) and for images above ``max_pixels`` (decompression bombs).
    """
    try:
        named = isinstance(path, (str, Path))  # a caller's file object stays open
        opened = open_regular(path) if isinstance(path, (str, Path)) else nullcontext(path)
        with warnings.catch_warnings(), opened as source:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if named and os.fstat(source.fileno()).st_size == 0:
                raise UnreadableImage("empty file (0 bytes)")
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise UnreadableImage(
                        f"{width}x{height} = {width * height} pixels is above the "
                        f"pixel limit {max_pixels}")
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image, or a format Pillow cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(f"corrupt or truncated: {exc}") from None


def header_pixels(data: bytes, *, cap: int) -> int:
    """Width x height from the image's header (nothing decoded); 0 when unreadable (the
    decoder then says why), capped at ``cap`` (the server refuses larger ones at once)."""
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return min(img.size[0] * img.size[1], cap)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 0


def pixel_hash(pixels: np.ndarray) -> str:
    """Hex sha256 of decoded pixels and their shape: equal for identical images."""
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def fit_image(pixels: np.ndarray, size: int, *, fit: str) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) uint8.

    ``fit``: ``crop`` resizes the short side to ``size`` and centre-crops, ``pad`` resizes
    the long side and pads with black, ``stretch`` ignores the aspect ratio.
    """
    img = Image.fromarray(pixels)
    target = (size, size)
    if fit == "crop":
        out = ImageOps.fit(img, target, method=Image.Resampling.BICUBIC)
    elif fit == "pad":
        out = ImageOps.pad(img, target, method=Image.Resampling.BICUBIC, color=(0, 0, 0))
    elif fit == "stretch":
        out = img.resize(target, Image.Resampling.BICUBIC)
    else:
        raise ValueError(f"unknown fit {fit!r}; expected crop, pad or stretch")
    return np.asarray(out, dtype=np.uint8)


def thumbnail_png(pixels: np.ndarray, size: int = 96) -> bytes:
    """PNG bytes of a thumbnail whose longer side is at most ``size`` pixels."""
    img = Image.fromarray(pixels)
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def natural_key(text: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    """Sort key that orders "2" before "10" (class folders named by numbers); names whose
    numbers tie ("01" and "1", "007" and "7") follow their text, so the order never
    depends on the order they came in (a set's follows PYTHONHASHSEED)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", text) if part), text


# What predict reads from a folder (the rest it lists as skipped); prepare lists every
# file. Pillow decodes all of these (AVIF where it was built with libavif).
class ImageCodec:
    """Images as the pipeline's items (:class:`pipeline.modality.ItemCodec`)."""

    name: str = "image"
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES

    def decode(self, path: Path | BinaryIO, *, max_pixels: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB, EXIF orientation applied (:func:`decode_image`)."""
        return decode_image(path, max_pixels=max_pixels)

    def content_hash(self, item: np.ndarray) -> str:
        """Hash of the decoded pixels (:func:`pixel_hash`)."""
        return pixel_hash(item)

    def extent(self, path: Path) -> int:
        """Short side in pixels from the file's header (EXIF rotation keeps it)."""
        try:
            with warnings.catch_warnings(), open_regular(path) as fh, Image.open(fh) as img:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # decode's call
                return min(img.size)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(f"cannot read the size: {exc}") from exc

    def note(self, path: Path) -> str:
        """What decoding leaves out, from the header: "" for a single-frame image; for an
        animated GIF / PNG / WebP or a multi-page TIFF, its frame count (only the first
        frame is decoded)."""
        try:
            with warnings.catch_warnings(), Image.open(path) as img:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                frames = int(getattr(img, "n_frames", 1))
        except (OSError, ValueError, EOFError, Image.DecompressionBombError):
            return ""
        return f"{frames} frames (animated or multi-page); only the first is used" \
            if frames > 1 else ""

    def fit(self, item: np.ndarray, size: int, *, fit: str) -> np.ndarray:
        """(size, size, 3) uint8 (:func:`fit_image`)."""
        return fit_image(item, size, fit=fit)

    def thumbnail(self, item: np.ndarray, size: int) -> bytes:
        """PNG bytes, longer side at most ``size`` (:func:`thumbnail_png`)."""
        return thumbnail_png(item, size)


IMAGES = ImageCodec()
