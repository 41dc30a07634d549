"""Near-copy signals of images: the synthetic copies that calibrate the rule, and the
pixel signals that do not depend on the backbone. Pure functions, no file I/O.

The embed stage computes every signal once per image and stores it; the calibration and
detection of :mod:`pipeline.dataquality.calibrate` compare what it stored, so an edit there does not
rerun embed. :func:`make_copies` makes the synthetic near copies (JPEG quality 50-80,
10-25 % smaller, a few pixels cropped, brightness +-5-10 %, all four combined);
:func:`thumbnails`, :func:`phash`, :func:`aligned_views` (the best match over crop and
downscale views, for small images where a one-pixel crop moves everything) and the copy
model (:func:`tiny_pixels`, :class:`CopyModel`: crop, resize and JPEG re-made from the
larger image of a pair, for images up to ``TINY_SIDE`` px) are the signals beside the
backbone embedding. Every signal is a matrix of L2-normalised rows compared by cosine,
except the views ((N, V, D)) and the copy model.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

COPY_KINDS = ("jpeg", "resize", "crop", "brightness", "combined")
THUMBNAIL_SIZE = 16  # px: thumbnails' side, so (N, 256) rows
PHASH_BITS = 8  # the perceptual hash's side, so (N, 64) rows
ALIGNED_SIZE = 8  # px: the aligned views' side, so (N, VIEWS, 64)
ALIGNED_BLUR = 0.7  # px (of the aligned views): Gaussian blur against JPEG noise
ALIGNED_SCALES = (1.0, 0.85, 0.75)  # downscales of each crop view (the resize copies)
MINI_SIDE = 64  # px: larger images are reduced to this short side before the views
ALIGNED_VIEWS = len(ALIGNED_SCALES) * 16  # x crops: each side cut or not, 2**4
TINY_SIDE = 16  # px: images with no side above this get the copy-model signal
COPY_QUALITIES = (50, 55, 60, 65, 70, 75, 80)  # JPEG qualities the copy model tries


# --------------------------------------------------------------------------- copies


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(50, 81)))  # quality 50..80
    buffer.seek(0)
    with Image.open(buffer) as out:
        return out.convert("RGB")


def _resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.75, 0.90)  # 10-25 % smaller
    w, h = img.size
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                      Image.Resampling.BICUBIC)


def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cut = max(1, round(min(w, h) / 100))  # "a few pixels": up to 1 % of the short side
    sides = rng.integers(0, cut + 1, size=4)  # left, top, right, bottom, pixels
    if sides.sum() == 0:
        sides[int(rng.integers(4))] = 1  # at least one pixel goes
    left, top, right, bottom = (int(s) for s in sides)
    if w - left - right < 1 or h - top - bottom < 1:
        return img
    return img.crop((left, top, w - right, h - bottom))


def _brightness(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.10)  # +-5-10 %
    return ImageEnhance.Brightness(img).enhance(float(factor))


def make_copies(images: Sequence[np.ndarray], *, kinds: Sequence[str] = COPY_KINDS,
                seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Synthetic near copies of each image, one per kind, the way real copies arise.

    Kinds: ``jpeg`` (re-encoded at quality 50-80), ``resize`` (10-25 % smaller, bicubic),
    ``crop`` (0 to 1 % of the short side off each side, at least one pixel),
    ``brightness`` (x 0.90-0.95 or 1.05-1.10), ``combined`` (crop, resize, brightness,
    then JPEG). Sizes change (resize, crop): compare copies through a fixed-size view
    (the embed stage's ``fit_image``, :func:`thumbnails`), never pixel by pixel.

    Args:
        images: N images, (H, W, 3) uint8 RGB each (sizes may differ).
        kinds: a subset of :data:`COPY_KINDS`.
        seed: the same images, kinds and seed give the same copies.
    Returns:
        the N x len(kinds) copies ((h, w, 3) uint8 each, image-major order), (M,) int64
        index of each copy's source image and (M,) str kind of each copy.
    """
    unknown = set(kinds) - set(COPY_KINDS)
    if unknown:
        raise ValueError(f"unknown copy kinds {sorted(unknown)}; expected {COPY_KINDS}")
    rng = np.random.default_rng(seed)
    steps = {"jpeg": [_jpeg], "resize": [_resize], "crop": [_crop],
             "brightness": [_brightness], "combined": [_crop, _resize, _brightness, _jpeg]}
    copies: list[np.ndarray] = []
    source: list[int] = []
    names: list[str] = []
    for i, pixels in enumerate(images):
        for kind in kinds:
            img = Image.fromarray(pixels)
            for step in steps[kind]:
                img = step(img, rng)
            copies.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
            source.append(i)
            names.append(kind)
    return copies, np.asarray(source, dtype=np.int64), np.asarray(names, dtype=object)


# --------------------------------------------------------------------------- signals


def _grey(pixels: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 luma of an (H, W, 3) uint8 image, stretched (antialiased)."""
    img = Image.fromarray(pixels).convert("L")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero (they then match nothing)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-6).astype(np.float32)


def thumbnails(images: Sequence[np.ndarray], *, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """Pixel-space signal: small grey thumbnails, zero-mean and unit-norm.

    The whole image is stretched to ``size`` x ``size`` (so a copy with a few pixels
    cropped lines up with its original to within a fraction of a thumbnail pixel),
    then centred and normalised: the cosine of two rows is the correlation of the two
    thumbnails, blind to brightness and contrast changes. A flat image gives a zero row.

    Returns:
        (N, size * size) float32, L2-normalised rows.
    """
    grey = np.stack([_grey(p, size).ravel() for p in images]) if len(images) else \
        np.zeros((0, size * size), np.float32)
    return _unit_rows(grey - grey.mean(axis=1, keepdims=True))


def phash(images: Sequence[np.ndarray], *, bits: int = PHASH_BITS) -> np.ndarray:
    """Pixel-space signal: the perceptual hash (DCT of a 4x thumbnail, low frequencies).

    Each image's ``bits`` x ``bits`` lowest DCT frequencies (DC left out) of a
    ``4 * bits`` px grey thumbnail are compared with their median; the hash is stored as
    +-1 / bits entries, so the cosine of two rows is 1 - 2 * Hamming distance / bits**2.

    Returns:
        (N, bits * bits) float32, unit-norm rows.
    """
    from scipy.fft import dctn

    rows = np.zeros((len(images), bits * bits), np.float32)
    for i, pixels in enumerate(images):
        freq = dctn(_grey(pixels, 4 * bits), norm="ortho")[:bits, :bits].ravel()
        freq[0] = np.median(freq[1:])  # the DC term carries brightness only
        rows[i] = np.where(freq > np.median(freq), 1.0, -1.0) / bits
    return rows


def _views_of(pixels: np.ndarray) -> np.ndarray:
    """(VIEWS, ALIGNED_SIZE**2) float32 views of one image (see :func:`aligned_views`)."""
    from scipy.ndimage import gaussian_filter

    img = Image.fromarray(pixels).convert("L")
    w, h = img.size
    cut = max(1, round(min(w, h) / 100))  # as make_copies' crop: 1 % of the short side
    shrink = min(1.0, MINI_SIDE / min(w, h))  # big images: views of a small copy, fast
    if shrink < 1:
        img = img.resize((max(1, round(w * shrink)), max(1, round(h * shrink))),
                         Image.Resampling.BICUBIC)
    mw, mh = img.size
    c = cut * shrink  # the cut in the reduced image's pixels (may be a fraction)
    # a side too short for a cut at both ends (1 or 2 pixels) is never cut: the views
    # keep their number, and the image its whole extent on that axis
    cx, cy = (c if side - 2 * c >= 1 else 0.0 for side in (mw, mh))
    views = []
    for scale in ALIGNED_SCALES:
        for left, top, right, bottom in itertools.product((0.0, cx), (0.0, cy), (0.0, cx),
                                                          (0.0, cy)):
            box = (left, top, mw - right, mh - bottom)
            bw, bh = box[2] - box[0], box[3] - box[1]
            # a whole-pixel crop is cut out (the edge pixels then stay out of the
            # filters' reach, as in a cropped copy); a fractional one is a resize box
            view = img.crop((round(left), round(top), round(box[2]), round(box[3]))) \
                if shrink == 1 else img.resize((round(bw), round(bh)),
                                               Image.Resampling.BICUBIC, box=box)
            # as a copy made smaller (in the original's pixels): detail lost first
            size = (max(1, round(bw * scale / shrink)), max(1, round(bh * scale / shrink)))
            if size[0] < view.width or size[1] < view.height:
                view = view.resize(size, Image.Resampling.BICUBIC)
            views.append(np.asarray(view.resize((ALIGNED_SIZE, ALIGNED_SIZE),
                                                Image.Resampling.BILINEAR), dtype=np.float32))
    stack = gaussian_filter(np.stack(views), (0, ALIGNED_BLUR, ALIGNED_BLUR), mode="nearest")
    flat = stack.reshape(len(views), -1)
    return _unit_rows(flat - flat.mean(axis=1, keepdims=True))


def aligned_views(images: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel-space signal for small images: blurred thumbnails of aligned views.

    On an 8x8 digit a one-pixel crop moves every stroke by an eighth of the image and a
    10-25 % downscale blurs it away, so no single thumbnail of the copy lines up with
    one of the original. Each image therefore gets ``ALIGNED_VIEWS`` views: every crop
    of 0 or the copy generator's cut (1 % of the short side, at least one pixel) off
    each side, each at full size and downscaled as a resized copy would be (x0.85,
    x0.75), each stretched to an ``ALIGNED_SIZE`` px grey thumbnail, blurred a little
    (JPEG noise) and centred to unit norm. View 0 is the whole image. Two images are
    compared by :func:`pair_similarity`: the best of one image's views against the
    other's whole view, both ways round. Images larger than ``MINI_SIDE`` are reduced
    first (their crops are sub-pixel at this size anyway).

    Returns:
        (N, ALIGNED_VIEWS, ALIGNED_SIZE**2) float32 unit rows (zero for a flat view).
    """
    if not len(images):
        return np.zeros((0, ALIGNED_VIEWS, ALIGNED_SIZE ** 2), np.float32)
    return np.stack([_views_of(p) for p in images])


def _jpeg_tiles(tiles: Sequence[np.ndarray], quality: int, *, columns: int = 256
                ) -> list[np.ndarray]:
    """Each (h, w) uint8 grey tile (sides up to ``TINY_SIDE``) after a JPEG round trip at
    ``quality``, bit for bit as if encoded alone, in one encode: grey JPEG codes 8 x 8
    blocks independently (the DC difference chain is lossless), so each tile is padded
    to whole blocks by repeating its edge (as the encoder pads an image) and placed on
    the block grid of one mosaic."""
    if not len(tiles):
        return []
    cell = -(-TINY_SIDE // 8) * 8
    rows = -(-len(tiles) // columns)
    mosaic = np.zeros((rows * cell, min(columns, len(tiles)) * cell), np.uint8)
    for k, tile in enumerate(tiles):
        (r, c), (h, w) = divmod(k, columns), tile.shape
        padded = np.pad(tile, ((0, -h % 8), (0, -w % 8)), mode="edge")
        mosaic[r * cell:r * cell + padded.shape[0], c * cell:c * cell + padded.shape[1]] = padded
    buffer = io.BytesIO()
    Image.fromarray(mosaic).save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer, formats=("JPEG",)) as decoded:
        out = np.asarray(decoded)
    return [out[(k // columns) * cell:(k // columns) * cell + t.shape[0],
                (k % columns) * cell:(k % columns) * cell + t.shape[1]]
            for k, t in enumerate(tiles)]


def tiny_pixels(images: Sequence[np.ndarray]) -> np.ndarray:
    """The copy model's stored form: per image, its height, width and grey pixels
    (row-major, zero-padded) when no side exceeds ``TINY_SIDE``, else a zero row.

    Returns:
        (N, 2 + TINY_SIDE**2) uint8.
    """
    out = np.zeros((len(images), 2 + TINY_SIDE ** 2), np.uint8)
    for i, pixels in enumerate(images):
        h, w = pixels.shape[:2]
        if max(h, w) <= TINY_SIDE:
            out[i, :2] = h, w
            out[i, 2:2 + h * w] = np.asarray(Image.fromarray(pixels).convert("L")).ravel()
    return out


class CopyModel:
    """Pixel-space signal for tiny images (no side above ``TINY_SIDE``, such as 8x8
    digits), where JPEG on a cropped, resized copy leaves every fixed-size view too noisy.

    Two images are compared by modelling the copy: the larger one (by area; both ways
    round when equal) is cropped by 0 or 1 pixel on each side (only crops that one uniform
    scale takes to the smaller one's exact size; a same-size pair is not cropped), resized
    to that size (bicubic), and re-encoded as JPEG at each of ``COPY_QUALITIES`` (and not
    at all); the similarity is the best correlation with the smaller image. Other images
    match nothing (0). Candidates come from the aligned views (:func:`aligned_views`), which
    the model rescores: see :func:`search` and :func:`copy_pairs`.

    Args:
        packed: (N, 2 + TINY_SIDE**2) uint8 from :func:`tiny_pixels`.
        views: (N, V, D) the same images' aligned views.
    """

    def __init__(self, packed: np.ndarray, views: np.ndarray):
        self.packed, self.views = np.asarray(packed, np.uint8), views
        self._views: dict[tuple[int, tuple[int, int]], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, rows: np.ndarray) -> CopyModel:
        return CopyModel(self.packed[rows], self.views[rows])

    def shape(self, i: int) -> tuple[int, int]:
        return int(self.packed[i, 0]), int(self.packed[i, 1])

    def any(self) -> bool:
        """Whether any image is tiny (else the signal matches nothing)."""
        return bool(len(self.packed)) and bool(self.packed[:, 0].any())

    def whole(self, i: int) -> np.ndarray:
        """(h * w,) image i's own pixels, centred unit row."""
        h, w = self.shape(i)
        row = self.packed[i, 2:2 + h * w].astype(np.float32)[None]
        return _unit_rows(row - row.mean())[0]

    def _crops(self, i: int, target: tuple[int, int]) -> list[np.ndarray]:
        """Image i's crops (0 or 1 px per side) that one uniform scale takes to
        ``target``, resized to it (bicubic), (th, tw) uint8 each."""
        h, w = self.shape(i)
        th, tw = target
        img = Image.fromarray(self.packed[i, 2:2 + h * w].reshape(h, w))
        out = []
        for left, top, right, bottom in itertools.product((0, 1), repeat=4):
            cw, ch = w - left - right, h - top - bottom
            if cw < 1 or ch < 1 or ((th, tw) == (h, w) and left + top + right + bottom):
                continue  # a same-size pair is compared uncropped
            if max((tw - 0.5) / cw, (th - 0.5) / ch) >= min((tw + 0.5) / cw, (th + 0.5) / ch):
                continue  # no uniform scale takes this crop to the target size
            view = img.crop((left, top, w - right, h - bottom))
            if view.size != (tw, th):
                view = view.resize((tw, th), Image.Resampling.BICUBIC)
            out.append(np.asarray(view))
        return out

    def prepare(self, keys: Sequence[tuple[int, tuple[int, int]]]) -> None:
        """Compute (and keep) :meth:`model_views` of every (image, target size) key at
        once: one JPEG round trip per quality for all their crops (:func:`_jpeg_tiles`)."""
        keys = [k for k in dict.fromkeys(keys) if k not in self._views]
        crops = [self._crops(i, target) for i, target in keys]
        tiles = [c for group in crops for c in group]
        coded = [_jpeg_tiles(tiles, q) for q in COPY_QUALITIES]
        at = 0
        for (i, (th, tw)), group in zip(keys, crops):
            rows = [row for k in range(at, at + len(group))
                    for row in [tiles[k]] + [c[k] for c in coded]]  # crop, then its JPEGs
            at += len(group)
            flat = (np.stack(rows).reshape(len(rows), -1).astype(np.float32) if rows
                    else np.zeros((0, th * tw), np.float32))
            self._views[(i, (th, tw))] = _unit_rows(flat - flat.mean(axis=1, keepdims=True))

    def model_views(self, i: int, target: tuple[int, int]) -> np.ndarray:
        """(K, th * tw) centred unit rows: image i modelled as a copy of size ``target``,
        each crop then its JPEG re-encodings (for a same-size target the first row is
        the image itself)."""
        if (i, target) not in self._views:
            self.prepare([(i, target)])
        return self._views[(i, target)]

    def similarity(self, other: CopyModel, a: np.ndarray | Sequence[int],
                   b: np.ndarray | Sequence[int], *, chunk: int = 4096) -> np.ndarray:
        """(P,) copy-model similarity of the pairs (``self[a[p]]``, ``other[b[p]]``):
        same-size pairs in chunks, the others one by one. Each image's modelled views are
        kept once computed (at most 8 x ``TINY_SIDE``**2 floats per image and size)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        out = np.zeros(len(a), np.float32)
        ha, wa = self.packed[a, 0].astype(int), self.packed[a, 1].astype(int)
        hb, wb = other.packed[b, 0].astype(int), other.packed[b, 1].astype(int)
        tiny = (ha > 0) & (hb > 0)
        same = tiny & (ha == hb) & (wa == wb)
        for h, w in sorted({(int(x), int(y)) for x, y in zip(ha[same], wa[same])}):
            group = np.flatnonzero(same & (ha == h) & (wa == w))
            # each image's views once, (U, K, D), then gathered per chunk of pairs
            mine_u, mine_at = np.unique(a[group], return_inverse=True)
            theirs_u, theirs_at = np.unique(b[group], return_inverse=True)
            self.prepare([(int(i), (h, w)) for i in mine_u])
            other.prepare([(int(j), (h, w)) for j in theirs_u])
            mine_views = np.stack([self.model_views(int(i), (h, w)) for i in mine_u])
            theirs_views = np.stack([other.model_views(int(j), (h, w)) for j in theirs_u])
            for start in range(0, len(group), chunk):  # (chunk, K, D) at a time
                pairs = group[start:start + chunk]
                mine = mine_views[mine_at[start:start + chunk]]
                theirs = theirs_views[theirs_at[start:start + chunk]]
                out[pairs] = np.maximum(
                    np.einsum("pvd,pd->pv", mine, theirs[:, 0]).max(1),
                    np.einsum("pvd,pd->pv", theirs, mine[:, 0]).max(1))
        apart = np.flatnonzero(tiny & ~same)
        for large, little, xs, ys in ((self, other, a[apart], b[apart]),
                                      (other, self, b[apart], a[apart])):
            large.prepare([(int(x), little.shape(int(y))) for x, y in zip(xs, ys)
                           if np.prod(large.shape(int(x))) >= np.prod(little.shape(int(y)))])
        for p in apart:
            i, j = int(a[p]), int(b[p])
            best = 0.0
            for big, small, m, n in ((self, other, i, j), (other, self, j, i)):
                (bh, bw), size = big.shape(m), small.shape(n)
                if bh * bw >= size[0] * size[1]:
                    sims = big.model_views(m, size) @ small.whole(n)
                    best = max(best, float(sims.max()) if len(sims) else 0.0)
            out[p] = best
        return out


def as_signals(stored: Sequence[np.ndarray], names: Sequence[str]) -> list[Signal]:
    """Signals as the embed stage stores them (``names`` in order), the copy model's
    packed pixels (:func:`tiny_pixels`) wrapped as a :class:`CopyModel` over the
    ``aligned`` views."""
    values = dict(zip(names, stored))
    return [CopyModel(values[n], values["aligned"]) if n == "copy_model" else values[n]
            for n in names]


Signal = np.ndarray | CopyModel  # (N, D) unit rows, (N, V, D) views, or the copy model
