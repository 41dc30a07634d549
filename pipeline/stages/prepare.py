"""prepare stage: list the user's images into data/prepared/manifest.csv.

Sources (``data.source``): ``demo`` (the digits tree the demo stage wrote), ``folder``
(class-per-folder, optionally under train/ val/ test/), ``csv`` (path,label[,timestamp]
[,group][,split]). Image files are only read, never modified, moved or deleted.

Paths stay inside ``data.root``: a row that resolves outside it (``..``, an absolute path,
a symbolic link) stops the stage unless ``data.allow_outside_root`` is true. FIFOs,
devices, sockets, symbolic link loops and dangling links become rows that embed reports
as unreadable (never opened), and rules in ``.dvcignore`` keep DVC from hashing them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from pipeline import paths
from pipeline.config import load_sections
from pipeline.errors import PipelineError, run_stage
from pipeline.manifest import check_two_classes, empty_class_folders, twin_labels, write_manifest
from pipeline.params.data import DataConfig
from pipeline.sources import (
    DVCIGNORE,
    SPLIT_DIRS,
    assign_ids,
    check_inside,
    list_folder,
    read_csv_source,
    unhashable,
    write_dvcignore,
)


def run(cfg: DataConfig, output: Path, *, ignore: Path = DVCIGNORE) -> pd.DataFrame:
    """List the source's images with ids and write the prepared manifest."""
    root = Path(cfg.root)
    if cfg.source == "demo" and root != paths.DEMO_ROOT:
        raise PipelineError(f"data.source = demo reads the demo images at {paths.DEMO_ROOT}, "
                            f"but data.root = {cfg.root!r}; set data.source: folder to read "
                            f"your own folder")
    if not root.is_dir():
        raise PipelineError(f"data.root = {cfg.root!r}: no such folder")
    if cfg.source == "csv":
        df = read_csv_source(Path(cfg.manifest))
    else:
        df = list_folder(root)
        for folder in empty_class_folders(root):
            print(f"warning: class folder {root / folder} is empty: it is no class",
                  file=sys.stderr)
    write_dvcignore(unhashable(root), ignore)
    check_inside(df, root, allow_outside=cfg.allow_outside_root)
    if twins := twin_labels(df["label"]):
        print(f"warning: {twins}", file=sys.stderr)
    check_two_classes(df["label"], f"data.root = {cfg.root!r}" if cfg.source != "csv"
                      else f"data.manifest = {cfg.manifest!r}")
    df = assign_ids(df, root)
    write_manifest(df, output)
    print(f"prepared {len(df)} images in {df['label'].nunique()} classes from {root}")
    if "split" in df and (df["split"] != "").any():  # split.method auto or predefined uses it
        counts = df["split"].value_counts()
        print("recorded split: " + ", ".join(f"{s}/ {counts[s]}" for s in SPLIT_DIRS
                                            if s in counts) +
              " (split.method auto or predefined uses it; the split stage says how)")
    return df


def main() -> None:
    """Entry point of the DVC stage."""
    (data,) = load_sections("data")
    run(data, paths.PREPARED)


if __name__ == "__main__":
    run_stage("prepare", main)
