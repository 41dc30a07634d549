"""Reading and writing the manifest table (one row per image, keyed by image_id)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_csv

BOOL_COLUMNS = ("keep",)
# The names of the clean manifest's ``issues`` column (;-joined), in the order clean
# checks, counts and reports them; clean.max_rate has one key per name.
ISSUES = ("unreadable", "exact_duplicate", "near_duplicate", "conflicting_labels",
          "label_issue", "outlier")


def join_issues(names: list[str]) -> str:
    """The ``issues`` cell of a row with these issues."""
    return ";".join(names)


def split_issues(cell: str) -> list[str]:
    """The issue names of an ``issues`` cell."""
    return cell.split(";") if cell else []


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest CSV: every column as text, except ``keep`` as bool."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run the stage that writes it first "
                            f"(dvc repro)")
    # lines end in "\n" (write_manifest): a carriage return in a label or a file name is
    # data (Python's csv writer leaves such a field unquoted), never a line end
    df = pd.read_csv(path, dtype=str, keep_default_na=False, lineterminator="\n")
    for column in BOOL_COLUMNS:
        if column in df:
            df[column] = df[column].map({"true": True, "false": False})
    return df


def read_folds(path: Path) -> dict[str, int]:
    """image id -> cross-validation fold of every train and val row of a split manifest
    (its ``fold`` column, written with split.folds; test rows have -1 and are left out)."""
    df = read_manifest(path)
    if "fold" not in df:
        raise PipelineError(f"{path} has no fold column: set split.folds (e.g. [0, 1, 2, 3, "
                            f"4]) and run dvc repro")
    return {i: int(f) for i, f in zip(df["image_id"], df["fold"]) if int(f) >= 0}


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest sorted by image_id, booleans as true/false, Unix newlines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    for column in BOOL_COLUMNS:
        if column in out:
            out[column] = out[column].map({True: "true", False: "false"})
    write_csv(out, path)  # renamed into place: never half a file, never through a link


def resolve(root: Path, relative: str) -> Path:
    """Absolute location of a manifest path (relative to the data root, or absolute)."""
    p = Path(relative)
    return p if p.is_absolute() else Path(root) / p


# Folder names read as a split, in any case, when every folder of a data root is one
# (as the CSV source's split values: pipeline.stages.prepare.SPLIT_SYNONYMS)
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def split_folder(name: str) -> str | None:
    """The split a folder named ``name`` stands for (``Train`` train, ``valid`` val), or
    None."""
    return SPLIT_FOLDERS.get(name.strip().casefold())


def split_layout(names: list[str]) -> dict[str, str]:
    """Folder name -> split when the folders of a data root (``names``) are its splits:
    every one names a split (:func:`split_folder`); empty when they are classes."""
    splits = {name: split_folder(name) for name in names}
    if not names or None in splits.values():
        return {}
    return {name: split for name, split in splits.items() if split is not None}


def empty_class_folders(root: Path) -> list[str]:
    """Class folders under ``root`` (or under its train/ val/ test/) holding no visible
    file, as paths relative to ``root``: a folder source lists no row, so no class, for
    them."""
    def visible(path: Path) -> list[Path]:
        return [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]

    root = Path(root)
    found = []
    folders = [p for p in visible(root) if p.is_dir()]
    layout = split_layout([p.name for p in folders])
    for folder in folders:
        layers = ([c for c in visible(folder) if c.is_dir()]
                  if folder.name in layout else [folder])
        for class_dir in layers:
            files = (f for f in class_dir.rglob("*") if f.is_file()
                     and not any(part.startswith(".") for part in f.relative_to(root).parts))
            if next(files, None) is None:
                found.append(class_dir.relative_to(root).as_posix())
    return found


def _shown(label: str) -> str:
    """A label as a warning names it: quoted, and escaped where it is not in Unicode's
    composed form (NFC), so two names that print alike read apart."""
    if unicodedata.is_normalized("NFC", label):
        return repr(label)
    return f"{ascii(label)} (decomposed)"


def twin_labels(labels: Iterable[str], *, limit: int = 5) -> str:
    """A warning naming the classes whose names differ only in case, Unicode
    normalisation (NFC/NFD: macOS writes file names decomposed) or surrounding spaces,
    or "" when there are none. They stay separate classes: the names are the user's."""
    groups: dict[str, set[str]] = {}
    for label in set(labels):
        key = unicodedata.normalize("NFC", label).strip().casefold()
        groups.setdefault(key, set()).add(label)
    twins = [sorted(names) for _, names in sorted(groups.items()) if len(names) > 1]
    if not twins:
        return ""
    shown = "; ".join(" and ".join(_shown(name) for name in names) for names in twins[:limit])
    more = f"; and {len(twins) - limit} more" if len(twins) > limit else ""
    return (f"{len(twins)} group(s) of class names differ only in case, Unicode "
            f"normalisation or surrounding spaces, and stay separate classes: {shown}{more}; "
            f"rename them alike if each group is one class")


def check_two_classes(labels: pd.Series, where: str, *, items: str = "images") -> None:
    """Raise unless ``labels`` hold at least two classes: one class trains no classifier.
    ``where``: what the labels are (a params key and value, a manifest's kept rows);
    ``items``: what they label (images, texts)."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        named = f"only class {classes[0]!r}" if classes else "no class"
        raise PipelineError(f"{where}: {named} ({len(labels)} {items}); a classifier needs "
                            f"{items} of at least two classes")
