"""Reading and writing the manifest table (one row per image, keyed by image_id)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

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
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in BOOL_COLUMNS:
        if column in df:
            df[column] = df[column].map({"true": True, "false": False})
    return df


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest sorted by image_id, booleans as true/false, Unix newlines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    for column in BOOL_COLUMNS:
        if column in out:
            out[column] = out[column].map({True: "true", False: "false"})
    out.to_csv(path, index=False, lineterminator="\n")


def resolve(root: Path, relative: str) -> Path:
    """Absolute location of a manifest path (relative to the data root, or absolute)."""
    p = Path(relative)
    return p if p.is_absolute() else Path(root) / p
