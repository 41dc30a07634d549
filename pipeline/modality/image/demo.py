"""The image demo: scikit-learn's bundled digits (1,797 8x8 grey images) as PNG files,
so a fresh clone runs with no network (the demo stage writes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(root: Path) -> list[dict[str, str]]:
    """Write each digit as ``root/<digit>/digit_<index>.png``; return the rows of its
    manifest (``path`` relative to ``root``, ``label``) in index order."""
    digits = load_digits()
    # (N, 8, 8) float in 0..16 -> uint8 in 0..255
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rows = []
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        relative = Path(str(target)) / f"digit_{index:04d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative)  # (8, 8) uint8: mode L
        rows.append({"path": relative.as_posix(), "label": str(target)})
    return rows
