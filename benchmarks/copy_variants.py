"""Study for issue 12 (not built into clean): can near copies of 8x8 digits be found if
each copy is compared with crop / downscale *variants* of its original?

    python benchmarks/copy_variants.py [--smoke]

Makes the calibration's synthetic copies (pipeline.modality.image.signals.make_copies: JPEG, resize,
crop, brightness, combined) of 100 seeded digits, and prints, per thumbnail size and
blur, the share of copies whose similarity to their original beats the 99.8 % quantile
of every image's best similarity to a distinct image: first plain 16-px thumbnails
(what clean uses), then the best over 16 crop variants (0/1 px off each side), then over
48 (those crops x downscale 1.0, 0.85, 0.75). Measured 2026-11-23: plain 0.396, 48
variants 0.888-0.892 (combined copies 0.46). Holds N x N x 48 similarities in memory
(about 0.6 GB for the 1,797 digits): a study, not a detector. ``--smoke``: the first
120 digits and 20 copies, in seconds.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from common import add_smoke
from PIL import Image, ImageFilter
from sklearn.datasets import load_digits

from pipeline.modality.image.signals import COPY_KINDS, make_copies


def signal(images: list[np.ndarray], size: int, blur: float) -> np.ndarray:
    """Centred, unit-norm grey thumbnails (as pipeline.modality.image.signals.thumbnails,
    + blur)."""
    rows = []
    for pixels in images:
        img = Image.fromarray(pixels).convert("L").resize((size, size),
                                                          Image.Resampling.BILINEAR)
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(blur))
        rows.append(np.asarray(img, np.float32).ravel())
    x = np.stack(rows)
    x -= x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def variants(pixels: np.ndarray, scales: tuple[float, ...]) -> list[np.ndarray]:
    """Every 0/1-px crop of each side, each downscaled by every factor in ``scales``."""
    h, w = pixels.shape[:2]
    out = []
    for left, top, right, bottom in itertools.product((0, 1), repeat=4):
        crop = Image.fromarray(pixels[top:h - bottom, left:w - right])
        for scale in scales:
            size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
            out.append(np.asarray(crop.resize(size, Image.Resampling.BICUBIC)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_smoke(parser)
    args = parser.parse_args()
    digits = load_digits()
    images = [np.repeat((x * 255 / 16).astype(np.uint8)[:, :, None], 3, 2)
              for x in digits.images[:120 if args.smoke else None]]
    sample = np.random.default_rng(0).choice(len(images), 20 if args.smoke else 100,
                                             replace=False)
    copies, source, kinds = make_copies([images[i] for i in sample], seed=0)[:3]
    for name, scales in (("plain", None), ("16 crop variants", (1.0,)),
                         ("48 crop x scale variants", (1.0, 0.85, 0.75))):
        for size, blur in ((16, 0), (16, 1)):
            plain = signal(images, size, blur)
            if scales is None:
                stacked = plain[:, None, :]  # (N, 1, D)
            else:
                stacked = np.stack([signal(variants(p, scales), size, blur) for p in images])
            copy_sim = np.einsum("md,mvd->mv", signal(copies, size, blur),
                                 stacked[sample[source]]).max(1)
            distinct = np.einsum("nd,kvd->nkv", plain, stacked).max(2)
            np.fill_diagonal(distinct, -1)
            threshold = np.quantile(distinct.max(1), 0.998)
            per_kind = ", ".join(f"{k} {(copy_sim[kinds == k] > threshold).mean():.2f}"
                                 for k in COPY_KINDS)
            print(f"{name}, {size} px, blur {blur}: threshold {threshold:.4f}, recall "
                  f"{(copy_sim > threshold).mean():.3f} ({per_kind})")


if __name__ == "__main__":
    main()
