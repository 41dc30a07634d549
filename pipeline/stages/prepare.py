"""prepare stage: list the user's images or texts into data/prepared/manifest.csv.

Sources (``data.source``): ``demo`` (the digits tree the demo stage wrote), ``demo_text``
(BBC News, which it wrote too), ``folder`` (class-per-folder, optionally under train/
val/ test/), ``csv`` (a CSV or JSON Lines manifest: path,label[,timestamp][,group]
[,split], or text,label[,id],... with the texts inline, which the manifest then carries).
``data.modality`` (auto: from the files, pipeline.modality.itemkinds) is said in the log. Source
files are only read, never modified, moved or deleted.

Paths stay inside ``data.root``: a row that resolves outside it (``..``, an absolute path,
a symbolic link) stops the stage unless ``data.allow_outside_root`` is true. FIFOs,
devices, sockets, symbolic link loops and dangling links become rows that embed reports
as unreadable (never opened), and rules in ``.dvcignore`` keep DVC from hashing them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from pipeline.contracts.manifest import (
    check_two_classes,
    empty_class_folders,
    twin_labels,
    write_manifest,
)
from pipeline.contracts.sources import (
    DVCIGNORE,
    SPLIT_DIRS,
    assign_ids,
    check_inside,
    list_folder,
    read_csv_source,
    unhashable,
    write_dvcignore,
)
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.modality import plugins
from pipeline.modality.itemkinds import inline, resolve_modality
from pipeline.params.data import DataConfig


def run(cfg: DataConfig, output: Path, *, ignore: Path = DVCIGNORE) -> pd.DataFrame:
    """List the source's items with ids and write the prepared manifest."""
    root = Path(cfg.root)
    demo = {"demo": paths.DEMO_ROOT, "demo_text": paths.DEMO_TEXTS}.get(cfg.source)
    if demo and root != demo:
        raise PipelineError(f"data.source = {cfg.source} reads the demo stage's files at "
                            f"{demo}, but data.root = {cfg.root!r}; set data.root: {demo}, "
                            f"or data.source: folder to read your own folder")
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
    if not inline(df):
        check_inside(df, root, allow_outside=cfg.allow_outside_root)
    if twins := twin_labels(df["label"]):
        print(f"warning: {twins}", file=sys.stderr)
    modality, why = resolve_modality(cfg.modality, df)
    items = plugins.noun(modality)
    check_two_classes(df["label"], f"data.root = {cfg.root!r}" if cfg.source != "csv"
                      else f"data.manifest = {cfg.manifest!r}", items=items)
    df = assign_ids(df, root)
    write_manifest(df, output)
    print(f"prepared {len(df)} {items} in {df['label'].nunique()} classes from "
          f"{cfg.manifest if cfg.source == 'csv' else root} (data.modality: {why})")
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
