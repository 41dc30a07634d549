"""``python -m pipeline init PATH``: look at a user's images or texts and point
params.yaml at them.

PATH is a class-per-folder tree (``root/<class>/<file>``), a tree already split
(``root/{train,val,test}/<class>/<file>``, the split folders' names in any case, valid/
for val) or a CSV or JSON Lines manifest (``path,label`` or ``text,label``, and
optionally ``timestamp,group,split``). The folder is listed by the prepare stage's own
rules, the modality decided as ``data.modality: auto`` does (pipeline.modality.itemkinds), files
are decoded by the pipeline's own decoders, and only the ``data.*`` lines of params.yaml
are rewritten, in place, so every comment stays.
"""

from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from pipeline.contracts.manifest import check_two_classes, resolve, twin_labels
from pipeline.contracts.sources import list_folder, read_csv_source
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.modality import UnreadableItem
from pipeline.modality.image.decoding import IMAGES, natural_key
from pipeline.modality.itemkinds import item_texts, resolve_modality
from pipeline.splitting.assign import SplitError, predefined_layout

SAMPLE = 200  # images decoded for the size statistics
MAX_PIXELS = 89_478_485  # embed.max_pixels' default: Pillow's decompression-bomb limit


@dataclass(frozen=True)
class Inspection:
    """What ``init`` found in a folder or CSV manifest."""

    source: str  # folder | csv
    root: Path  # the folder the manifest's paths are relative to
    manifest: Path | None  # the CSV (csv sources only)
    layout: str  # the layout in words, with what the split stage will make of it
    rows: pd.DataFrame  # path, label[, split]: what prepare will list
    short_sides: list[int]  # pixels, of the decoded sample
    unreadable: list[tuple[str, str]]  # (path, reason)
    warnings: tuple[str, ...] = ()  # about the labels, as prepare will print them
    modality: str = "image"  # or text (what data.modality auto decides)
    words: list[int] = field(default_factory=list)  # texts: words in each readable text


def list_source(path: Path, root: Path | None = None) -> tuple[str, Path, pd.DataFrame]:
    """(source, root, rows) for a folder or a CSV manifest, by prepare's rules; a clear
    error for a missing path, an empty folder or what is neither."""
    if not path.exists():
        raise PipelineError(f"{path}: no such file or folder")
    if path.is_dir():
        if not any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise PipelineError(f"{path}: the folder is empty; put one folder of images per "
                                f"class in it")
        return "folder", path, list_folder(path)
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise PipelineError(f"{path} is neither a folder nor a .csv or .jsonl manifest")
    return "csv", root or path.parent, read_csv_source(path)


def describe_layout(rows: pd.DataFrame, source: str) -> str:
    """The layout in words, and how ``split.method: auto`` will use it."""
    given = rows["split"][rows["split"] != ""] if "split" in rows else pd.Series([], dtype=str)
    if given.empty:
        kind = "class-per-folder" if source == "folder" else "a CSV manifest without splits"
        return f"{kind}; split.method auto divides it, stratified, by split.fractions"
    try:
        _, decision = predefined_layout(list(given))
    except SplitError as exc:  # the split stage would stop on it: say so now
        raise PipelineError(f"{exc}") from None
    return (f"{decision.removeprefix('layout ')} (split.method auto uses the split the "
            f"source records)")


def check_images(rows: pd.DataFrame, root: Path, *, sample: int = SAMPLE, seed: int = 0
                 ) -> tuple[list[int], list[tuple[str, str]]]:
    """Short sides of a seeded sample of up to ``sample`` decoded images, and the files
    that cannot be read (every file's header is read, the sample fully decoded)."""
    unreadable, readable = [], []
    for rel in tqdm(rows["path"], desc="reading headers", mininterval=1.0, leave=False):
        try:
            IMAGES.extent(resolve(root, rel))
            readable.append(rel)
        except UnreadableItem:
            try:  # the decoder's reason, the one clean will give
                IMAGES.decode(resolve(root, rel), max_pixels=MAX_PIXELS)
                readable.append(rel)
            except UnreadableItem as exc:
                unreadable.append((rel, str(exc)))
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(readable), size=min(sample, len(readable)), replace=False))
    short_sides = []
    for i in tqdm(picked, desc="decoding a sample", mininterval=1.0, leave=False):
        try:
            pixels = IMAGES.decode(resolve(root, readable[i]), max_pixels=MAX_PIXELS)
            short_sides.append(int(min(pixels.shape[:2])))
        except UnreadableItem as exc:
            unreadable.append((readable[i], str(exc)))
    return short_sides, sorted(unreadable)


def inspect_source(path: Path, *, root: Path | None = None, sample: int = SAMPLE
                   ) -> Inspection:
    """Look at a folder or CSV manifest: layout, classes, counts, image sizes, broken files."""
    source, base, rows = list_source(path, root)
    modality, _ = resolve_modality("auto", rows)
    check_two_classes(rows["label"], str(path), items=f"{modality}s")
    layout = describe_layout(rows, source)
    words: list[int] = []
    short_sides: list[int] = []
    if modality == "text":
        words, unreadable = check_texts(rows, base)
    else:
        short_sides, unreadable = check_images(rows, base, sample=sample)
    twins = twin_labels(rows["label"])
    return Inspection(source, base, path if source == "csv" else None, layout, rows,
                      short_sides, unreadable, (twins,) if twins else (), modality, words)


def check_texts(rows: pd.DataFrame, root: Path) -> tuple[list[int], list[tuple[str, str]]]:
    """Words in each readable text, and the texts that cannot be read, with the reason."""
    words, unreadable = [], []
    found = item_texts(rows, root, range(len(rows)))
    for rel, item in zip(rows["path"], found):
        if isinstance(item, Exception):
            unreadable.append((rel, str(item)))
        else:
            words.append(len(item[0].split()))
    return words, sorted(unreadable)


def counts_table(rows: pd.DataFrame, items: str = "images") -> pd.DataFrame:
    """Items per class (rows, natural order) and per split folder (columns), with totals."""
    split = (rows["split"].replace("", "(none)") if "split" in rows
             else pd.Series(items, index=rows.index))
    table = pd.crosstab(rows["label"], split)
    order = [c for c in ("train", "val", "test", "(none)", items) if c in table.columns]
    table = table[order].reindex(sorted(table.index, key=lambda c: natural_key(str(c))))
    if len(order) > 1:
        table["total"] = table.sum(axis=1)
    return table


def report_lines(found: Inspection, *, limit: int = 5) -> list[str]:
    """What ``init`` prints about the data."""
    table = counts_table(found.rows, f"{found.modality}s")
    lines = [f"{found.manifest or found.root}: {len(found.rows)} files in {len(table)} "
             f"classes", textwrap.fill(f"layout: {found.layout}", 88, initial_indent="  ",
                                       subsequent_indent="    ")]
    text = table.reset_index().rename(columns={"label": "class"}).to_string(index=False)
    lines += ["  " + line for line in text.split("\n")]
    sides, words = found.short_sides, found.words
    if found.modality == "text":
        lines.append(f"  texts: words per text median {int(np.median(words))}, min "
                     f"{min(words)}, max {max(words)}" if words else
                     "  texts: none could be read")
    else:
        lines.append(f"  image size (short side of {len(sides)} decoded images): median "
                     f"{int(np.median(sides))} px, min {min(sides)}, max {max(sides)}"
                     if sides else "  image size: no image could be decoded")
    lines.append(f"  unreadable files: {len(found.unreadable)}" + ("" if not found.unreadable
                 else " (clean marks them unreadable and drops them), e.g."))
    lines += [f"    {rel}: {reason}" for rel, reason in found.unreadable[:limit]]
    lines += [f"  warning: {warning}" for warning in found.warnings]
    return lines


def param_path(path: Path, base: Path) -> str:
    """``path`` as params.yaml should hold it: relative to the project (the folder of
    params.yaml, where DVC runs the stages) when inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return absolute.as_posix()


def data_values(found: Inspection, project: Path) -> dict[str, str]:
    """The data.* settings for what was found (a folder keeps the demo's manifest as
    data.manifest: it is read for csv sources only, and the demo stage writes it, so
    the prepare stage's DVC dependency on it stays valid)."""
    manifest = found.manifest if found.manifest is not None else paths.DEMO_MANIFEST
    return {"source": found.source, "root": param_path(found.root, project),
            "manifest": param_path(manifest, project) if found.manifest else str(manifest),
            "modality": "text" if found.modality == "text" else "auto"}  # auto finds images


def set_keys(text: str, section: str, values: dict[str, str]) -> str:
    """``text`` (params.yaml) with ``section.key: value`` lines rewritten in place: the
    comments, their column and every other line stay as they were."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if re.match(rf"{section}:(\s|#|$)", line)),
                 None)
    if start is None:
        raise PipelineError(f"params.yaml has no section {section!r}")
    todo = dict(values)
    for i in range(start + 1, len(lines)):
        if lines[i] and not lines[i].startswith((" ", "#")):
            break  # the next section
        match = re.match(r"^(  ([A-Za-z_]+):[ \t]*)(.*?)([ \t]*#.*)?$", lines[i])
        if match and match.group(2) in todo:
            prefix, _, old, comment = match.groups()
            value = yaml.safe_dump(todo.pop(match.group(2)), width=10**9).split("\n")[0]
            line = prefix + value
            if comment:
                column = len(prefix) + len(old) + len(comment) - len(comment.lstrip())
                line += " " * max(1, column - len(line)) + comment.lstrip()
            lines[i] = line
    if todo:
        raise PipelineError(f"params.yaml section {section!r} lacks {', '.join(todo)}")
    new = "\n".join(lines)
    expected = yaml.safe_load(text)
    expected[section].update(values)
    if yaml.safe_load(new) != expected:  # never write a file that means something else
        raise PipelineError(f"could not rewrite {section}.* in params.yaml in place")
    return new
