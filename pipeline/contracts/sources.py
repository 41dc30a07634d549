"""The user's source as the prepare stage and ``init`` read it: a class-per-folder tree
(optionally under train/ val/ test/) or a CSV or JSON Lines manifest (path,label or, for
texts given inline, text,label[,id]; [,timestamp][,group][,split]), the item ids, the
recorded split values, the paths that stay inside ``data.root``, and the ``.dvcignore``
rules for files DVC must not hash (FIFOs, devices, sockets, link loops, dangling links,
names that are not UTF-8). Files are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pipeline.contracts.manifest import (
    resolve,
    split_folder,
    split_layout,
)
from pipeline.core.errors import PipelineError
from pipeline.core.files import file_sha256, utf8_path
from pipeline.modality import UnreadableItem

SPLIT_DIRS = ("train", "val", "test")
OPTIONAL_COLUMNS = ("timestamp", "group", "split")
LINE = "_line"  # a JSON Lines row's line number, while read_csv_source names the texts
DVCIGNORE = Path(".dvcignore")  # in the repository root; no DVC output: DVC reads it


def _visible(path: Path) -> bool:
    """False for hidden files and anything under a hidden folder (.DS_Store, .git)."""
    return not any(part.startswith(".") for part in path.parts)


def list_folder(root: Path) -> pd.DataFrame:
    """Rows (path, label[, split]) for every file under class folders of ``root``.

    ``root/<class>/...`` or ``root/<split>/<class>/...`` with split in train, val, test
    (folder names in any case, and valid/ or validation/ for val:
    :func:`split_folders`). Every visible file is listed, image or not, so clean can
    report what is unreadable.
    """
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    layout = split_folders(root, subdirs)
    split_dirs = list(layout)
    loose = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if loose:
        print(f"warning: {len(loose)} files directly in {root} have no class folder and are "
              f"left out: {', '.join(loose[:5])}", file=sys.stderr)
    rows = []
    for split in split_dirs or [""]:
        base = root / split if split else root
        class_dirs = [p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for class_dir in sorted(class_dirs):
            for file in sorted(class_dir.rglob("*")):
                rel = file.relative_to(root)
                # not only regular files: FIFOs, loops and dangling links become rows
                # that embed reports as unreadable
                if not file.is_dir() and _visible(rel):
                    # a name that is not UTF-8 is listed escaped: embed marks it
                    # unreadable with that reason, .dvcignore keeps DVC off it
                    row = {"path": utf8_path(rel.as_posix()), "label": class_dir.name}
                    if split:
                        row["split"] = layout[split]
                    rows.append(row)
    if not rows:
        raise PipelineError(f"no files found in class folders under {root}")
    return pd.DataFrame(rows)


def split_folders(root: Path, subdirs: list[str]) -> dict[str, str]:
    """Folder -> split when the folders of ``root`` are its splits (any case, valid/ for
    val), else {}. Lowercase train/ val/ test/ beside class folders stop the stage; other
    split-like names there (Train/, valid/) are classes, with a warning naming them."""
    layout = split_layout(subdirs)
    if not layout:
        exact = [d for d in subdirs if d in SPLIT_DIRS]
        others = [d for d in subdirs if d not in SPLIT_DIRS]
        if exact:
            raise PipelineError(f"{root} mixes split folders ({', '.join(exact)}) with "
                                f"other folders ({', '.join(others[:5])}); use one layout")
        alike = [d for d in subdirs if split_folder(d)]
        if alike:
            print(f"warning: folders {', '.join(f'{d}/' for d in alike)} in {root} look like "
                  f"split folders but sit beside class folders, so they are read as classes",
                  file=sys.stderr)
        return {}
    for split in SPLIT_DIRS:
        folders = [d for d, s in layout.items() if s == split]
        if len(folders) > 1:
            raise PipelineError(f"{root} has {len(folders)} folders for split {split} "
                                f"({', '.join(f'{d}/' for d in folders)}); merge them into one")
    renamed = [f"{d}/ as {s}" for d, s in layout.items() if d != s]
    if renamed:
        print(f"note: split folders in {root} read as splits: {', '.join(renamed)}",
              file=sys.stderr)
    return layout


def read_table(manifest: Path) -> pd.DataFrame:
    """Every cell of a CSV or JSON Lines (``.jsonl``) manifest as text ("" when absent)."""
    if not manifest.is_file():
        raise PipelineError(f"data.manifest = {str(manifest)!r}: no such file")
    if manifest.suffix.lower() in (".jsonl", ".ndjson"):
        return read_jsonl(manifest)
    try:
        return pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise PipelineError(f"data.manifest = {str(manifest)!r} is empty: it needs a header "
                            f"line path,label (or text,label) and one line per item"
                            ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PipelineError(f"data.manifest = {str(manifest)!r} is not a readable CSV: "
                            f"{' '.join(str(exc).split())}") from None


def read_jsonl(manifest: Path) -> pd.DataFrame:
    """One JSON object per line (blank lines skipped), values as text."""
    rows = []
    try:
        lines = manifest.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{manifest} is not UTF-8 (byte {exc.start}): JSON Lines must "
                            f"be") from None
    for number, row in jsonl_objects(lines):
        if isinstance(row, str):
            raise PipelineError(f"{manifest}: line {number} is {row}")
        rows.append({k: "" if v is None else str(v) for k, v in row.items()}
                    | {LINE: str(number)})
    if not rows:
        raise PipelineError(f"data.manifest = {str(manifest)!r} has no lines: zero items")
    return pd.DataFrame(rows).fillna("")


def jsonl_objects(lines: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number from 1, its object or why it is none) of JSON Lines; blank lines
    left out. The manifest reader stops at a bad line, ``predict`` reports it and goes on."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON ({exc.msg})"
            continue
        yield number, row if isinstance(row, dict) else "not an object {...}"


def read_csv_source(manifest: Path) -> pd.DataFrame:
    """Rows from a user manifest (CSV, or JSON Lines): path,label or, for texts given
    inline, text,label (and an optional unique ``id``); optionally timestamp,group,split."""
    df = read_table(manifest)
    item = "text" if "text" in df else "path"
    missing = [c for c in (item, "label") if c not in df]
    if missing:
        raise PipelineError(f"{manifest} lacks column(s) {', '.join(missing)}; it needs "
                            f"path,label (or text,label) and may have "
                            f"{','.join(OPTIONAL_COLUMNS)}")
    if item == "text" and "path" in df:
        raise PipelineError(f"{manifest} has both a text and a path column: give the texts "
                            f"inline (text) or as files (path), not both")
    known = ("path", "label", "text", "id", LINE, *OPTIONAL_COLUMNS)
    extra = [c for c in df if c not in known]
    if extra:
        print(f"warning: {manifest}: columns {', '.join(extra)} are not used", file=sys.stderr)
    if df.empty:
        raise PipelineError(f"data.manifest = {str(manifest)!r} has a header but no rows: "
                            f"zero items; add one line {item},label per item")
    if item == "text":
        df = name_texts(df, manifest)
    repeated = df["path"][df["path"].duplicated()].unique()
    if len(repeated):  # both rows stay: clean marks them as exact duplicates
        print(f"warning: {manifest}: {len(repeated)} path(s) listed more than once, e.g. "
              f"{repeated[0]}", file=sys.stderr)
    empty = df.index[(df["path"] == "") | (df["label"] == "")]
    if len(empty):
        raise PipelineError(f"{manifest}: row(s) {', '.join(str(i + 2) for i in empty[:5])} "
                            f"have an empty {item} or label")
    check_split_values(df, manifest)
    return df[[c for c in df if c in ("path", "label", "text", *OPTIONAL_COLUMNS)]]


def name_texts(df: pd.DataFrame, manifest: Path) -> pd.DataFrame:
    """Texts given inline get a ``path`` that names them in every page and table: their
    ``id``, unique, or ``<manifest>#<row>`` (a CSV's data row, a JSON Lines file's line,
    from 1, as ``python -m pipeline predict`` names them). An empty text stays (an
    unreadable row)."""
    df = df.copy()
    lines = df[LINE] if LINE in df else [str(n + 1) for n in range(len(df))]
    if "id" in df:
        twice = df["id"][df["id"].duplicated(keep=False) & (df["id"] != "")]
        if len(twice):
            where = ", ".join(lines[i] for i in twice.index[:5])
            raise PipelineError(f"{manifest}: id {twice.iloc[0]!r} is given to more than one "
                                f"row (rows {where}); ids must be unique, or leave the "
                                f"column out")
    ids = df["id"] if "id" in df else [""] * len(df)
    df.insert(0, "path", [i or f"{manifest.name}#{n}" for i, n in zip(ids, lines)])
    return df.drop(columns=[c for c in ("id", LINE) if c in df])


SPLIT_SYNONYMS = {"training": "train", "validation": "val", "valid": "val", "dev": "val",
                  "testing": "test"}


def check_split_values(df: pd.DataFrame, manifest: Path) -> None:
    """A CSV's split column says train, val or test in every row, or nothing in every row
    (no recorded split): stop here on anything else (``TRAIN``, ``validation``, a row
    left empty), which the split stage would refuse only after embed and clean ran."""
    if "split" not in df or (df["split"] == "").all():
        return
    wrong = df["split"][(df["split"] != "") & ~df["split"].isin(SPLIT_DIRS)]
    if len(wrong):
        values = list(dict.fromkeys(wrong))
        meant = {v: SPLIT_SYNONYMS.get(v.strip().lower(), v.strip().lower()) for v in values}
        hint = ", ".join(f"{m} for {v!r}" for v, m in meant.items() if m in SPLIT_DIRS)
        raise PipelineError(
            f"{manifest}: column split has {', '.join(map(repr, values[:5]))} (line(s) "
            f"{', '.join(str(i + 2) for i in wrong.index[:5])}); use train, val or test, in "
            f"lower case{f' (e.g. {hint})' if hint else ''}, or leave the column empty in "
            f"every row to let split.method divide the images")
    blank = df.index[df["split"] == ""]
    if len(blank):
        raise PipelineError(
            f"{manifest}: line(s) {', '.join(str(i + 2) for i in blank[:5])} have an empty "
            f"split while the others have one; give every row train, val or test, or leave "
            f"the column empty in every row")


def assign_ids(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    """Add a content-derived ``image_id`` and sort by it.

    The id is the first 16 hex digits of the file's sha256 (of the text, for texts given
    inline); byte-identical files get
    ``-1``, ``-2``... suffixes in path order; unreadable files hash their path instead.
    The result does not depend on the order in which the rows came.
    """
    df = df.sort_values("path", kind="stable").reset_index(drop=True)
    ids = []
    if "text" in df:  # texts given inline: the hash of their bytes
        ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in df["text"]]
    for rel in tqdm(df["path"] if not ids else [], desc="hashing", mininterval=1.0,
                    leave=False):
        try:
            ids.append(file_sha256(resolve(root, rel))[:16])
        except (OSError, UnreadableItem):  # never opened when no regular file
            ids.append("x" + hashlib.sha256(f"unreadable:{rel}".encode()).hexdigest()[:15])
    df.insert(0, "image_id", ids)
    repeat = df.groupby("image_id").cumcount()
    df["image_id"] = [i if r == 0 else f"{i}-{r}" for i, r in zip(df["image_id"], repeat)]
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def check_inside(df: pd.DataFrame, root: Path, *, allow_outside: bool) -> None:
    """Stop when a row's file resolves outside ``root`` (through ``..``, an absolute path
    or a symbolic link), unless allowed. Missing files, loops and dangling links pass:
    they are unreadable rows, whose reason embed records."""
    base = root.resolve()
    outside = []
    for rel in df["path"]:
        try:
            real = resolve(root, rel).resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: a loop (Python < 3.13)
            continue
        if not real.is_relative_to(base):
            outside.append(f"{rel!r} -> {real}")
    if outside and not allow_outside:
        raise PipelineError(
            f"{len(outside)} file(s) resolve outside data.root = {str(root)!r}, e.g. "
            f"{'; '.join(outside[:3])}: refused. Move them under data.root, or set "
            f"data.allow_outside_root: true to read them (files reached by '..' or an "
            f"absolute path are then no DVC dependency: changing them reruns nothing)")
    if outside:
        print(f"warning: {len(outside)} file(s) outside data.root read "
              f"(data.allow_outside_root), e.g. {outside[0]}", file=sys.stderr)


def unhashable(root: Path) -> list[Path]:
    """Entries under ``root`` that DVC cannot hash: FIFOs (reading one blocks), devices,
    sockets, symbolic link loops and dangling links (DVC stops on them), and names that
    are not valid UTF-8 (DVC fails on them)."""
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            try:
                if stat.S_ISREG(os.stat(path).st_mode) and utf8_path(name) == name:
                    continue
            except OSError:
                pass
            found.append(path)
    return sorted(found)


IGNORE_START = "# >>> prepare: files under data.root that DVC must not hash (rewritten by prepare)"
IGNORE_END = "# <<< prepare"


def ignore_rule(path: Path) -> str:
    """A .dvcignore line matching exactly this file (relative to the repository root)."""
    rule = re.sub(r"([\\*?\[])", r"\\\1", path.as_posix())
    rule = re.sub("[\udc80-\udcff]", "?", rule)  # a byte that is not UTF-8: any character
    return "/" + (rule[:-1] + "\\ " if rule.endswith(" ") else rule)


def write_dvcignore(found: list[Path], ignore: Path) -> None:
    """Keep ``ignore``'s prepare block equal to rules for the ``found`` files below its
    folder (the repository root); the user's own lines stay. Untouched when unchanged."""
    base = ignore.absolute().parent
    inside = [p.absolute().relative_to(base) for p in found if p.absolute().is_relative_to(base)]
    old = ignore.read_text() if ignore.exists() else ""
    kept = re.sub(rf"\n?{re.escape(IGNORE_START)}\n.*?{re.escape(IGNORE_END)}\n", "\n",
                  old, flags=re.S).rstrip("\n")
    block = "\n".join([IGNORE_START, *map(ignore_rule, inside), IGNORE_END]) if inside else ""
    new = "\n\n".join(x for x in (kept, block) if x) + "\n" if kept or block else ""
    if new != old:
        ignore.write_text(new)
    if found:
        print(f"warning: {len(found)} file(s) under data.root are special files, broken "
              f"links or names that are not UTF-8 ("
              f"{', '.join(utf8_path(str(p)) for p in found[:3])}): unreadable, never opened"
              + (f"; rules in {ignore} keep DVC from hashing them" if inside else ""),
              file=sys.stderr)
