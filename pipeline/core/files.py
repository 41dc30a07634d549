"""Writing files so that a reader never sees half of one, and never through a link into
DVC's cache: every output is written beside its path and renamed over it."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pipeline.modality import UnreadableItem

if TYPE_CHECKING:
    import pandas as pd


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error
    the file is flushed to disk and renamed over ``path`` in one step, so a kill or a
    full disk leaves the previous file (or none), never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same file name in a hidden folder beside it: TorchScript names its records
    # after the file, so the bytes do not depend on where they were written
    folder = path.with_name(f".{path.name}.partial")
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / path.name
    try:
        yield partial
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_metrics(path: Path, values: Mapping[str, Any], headline: Sequence[str]) -> None:
    """Every number to ``all/<name>`` beside ``path`` (a plain output: the report, the
    summary and the tests read it) and the ``headline`` keys, in that order, to ``path``:
    the DVC metrics file that ``dvc exp show`` and ``dvc metrics diff`` display, one
    column per key, so it holds only what people compare (README "Experiments")."""
    missing = [k for k in headline if k not in values]
    if missing:
        raise KeyError(f"headline metrics {missing} missing from {sorted(values)}")
    full = path.parent / "all" / path.name
    full.parent.mkdir(parents=True, exist_ok=True)
    write_text(full, json.dumps(dict(values), indent=2) + "\n")
    write_text(path, json.dumps({k: values[k] for k in headline}, indent=2) + "\n")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """A new empty folder beside ``path`` to fill; when the block ends without an error
    it replaces ``path`` whole (the old folder is removed after the swap), so a kill or
    a full disk leaves the previous folder, never a half-written one, and no file is ever
    written through a link DVC checked out into the old folder."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    old = path.with_name(f".{path.name}.old")
    try:
        yield partial
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)`` (UTF-8) through :func:`atomic_path`."""
    with atomic_path(Path(path)) as partial:
        partial.write_text(text, encoding="utf8")


def declared_outputs(stage: str, item: str = "", dvc_yaml: Path = Path("dvc.yaml")
                     ) -> list[Path]:
    """The paths dvc.yaml declares as ``stage``'s outs, metrics and plots, with
    ``${item...}`` replaced by ``item`` (a matrix or foreach stage's one item); [] when
    there is no dvc.yaml or no such stage (a stage run outside a DVC project)."""
    import yaml

    try:
        spec = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {}).get(stage)
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    if not isinstance(spec, dict):
        return []
    body = spec.get("do", spec)
    found = []
    for kind in ("outs", "metrics", "plots"):
        for entry in body.get(kind) or []:
            name = next(iter(entry)) if isinstance(entry, dict) else str(entry)
            name = re.sub(r"\$\{item(\.[A-Za-z_]\w*)?\}", item, name)
            if "${" not in name:
                found.append(Path(name))
    return found


def detach_links(paths: Sequence[Path]) -> list[Path]:
    """Unlink every file under ``paths`` that is a symbolic link or a hard link with
    other names; return them.

    DVC checks cached outputs out as links into ``.dvc/cache`` (``cache.type``): writing
    such a file in place, as a stage run directly (``python -m pipeline.stages.X``) would,
    rewrites the cached object, and ``dvc checkout`` then restores the wrong bytes while
    ``dvc status`` says up to date. ``dvc repro`` removes a stage's outputs before running
    it; this does the same for the links alone. Nothing is lost: the content stays in the
    cache, and ``dvc checkout`` brings it back."""
    detached = []
    for top in paths:
        files = [top] if not top.is_dir() or top.is_symlink() else sorted(
            p for p in top.rglob("*") if p.is_symlink() or p.is_file())
        for file in files:
            try:
                info = file.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode)
                                               and info.st_nlink > 1):
                file.unlink()
                detached.append(file)
    return detached


def free_bytes(folder: Path) -> int:
    """Bytes free to this user on the file system holding ``folder`` (or its nearest
    existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`OSError` ENOSPC naming ``folder`` and ``needed`` bytes when its file
    system has less free (before a large write of known size, instead of a crash or a
    SIGBUS halfway through)."""
    free = free_bytes(folder)
    if free < needed:
        raise OSError(errno.ENOSPC, f"{what} needs {needed / 2**20:.0f} MiB under {folder} "
                      f"and {free / 2**20:.0f} MiB are free", str(folder))


def write_csv(frame: pd.DataFrame, path: Path, **options: Any) -> None:
    """``frame.to_csv(path, index=False, lineterminator="\\n", **options)`` through
    :func:`atomic_path`."""
    with atomic_path(Path(path)) as partial:
        frame.to_csv(partial, index=False, lineterminator="\n", **options)


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save(path, array)`` through :func:`atomic_path`."""
    with atomic_path(Path(path)) as partial:
        np.save(partial, array)


def utf8_path(path: str) -> str:
    """``path`` as it can be written to a UTF-8 file: a name that is not valid UTF-8
    (Python holds its bytes as surrogates, e.g. ``caf\\udce9.png``) gets each such byte
    as ``\\xNN`` (``caf\\xe9.png``); valid names come back unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def non_utf8_original(path: Path | str) -> bytes | None:
    """The file a :func:`utf8_path` name stands for, as bytes, when ``path`` itself does
    not exist but that file does; else None."""
    text = str(path)
    if "\\x" not in text or os.path.lexists(text):
        return None
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m[1], 16)]), text.encode())
    return raw if os.path.lexists(raw) else None


# ------------------------------------------------- reading only what is a regular file

FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
              stat.S_IFDIR: "a folder"}


def _stat_problem(path: Path, exc: OSError) -> str:
    """Why ``os.stat`` failed, in words: a loop, a dangling link, a missing file."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT and os.path.islink(path):
        return f"dangling symbolic link (to {os.readlink(path)!r}, which does not exist)"
    if exc.errno == errno.ENOENT and non_utf8_original(path):
        return ("file name is not valid UTF-8 (shown with \\xNN escapes): never opened; "
                "rename the file to read it")
    if exc.errno == errno.ENOENT:
        return "file not found"
    return f"cannot read: {exc.strerror}"


def not_regular(path: Path | str) -> str:
    """Why ``path`` is no regular file to read, in words ("" when it is one, symbolic
    links followed): a FIFO, device, socket or folder (found with ``os.stat``, never
    opened: a FIFO would block, ``/dev/zero`` never ends), a symbolic link loop, a
    dangling link or a missing file."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _stat_problem(Path(path), exc)
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a plain file")
        return f"{kind}, not a regular file: never opened"
    return ""


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file (symbolic links followed) for reading, binary.

    Raises :class:`pipeline.modality.UnreadableItem` with the reason for a FIFO, device,
    socket or folder (checked with ``os.stat`` before opening: a FIFO would block,
    ``/dev/zero`` never ends), a symbolic link loop, a dangling link or a missing file.
    """
    problem = not_regular(path)
    if problem:
        raise UnreadableItem(problem)
    try:  # O_NONBLOCK: a file swapped for a FIFO after the check still cannot block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise UnreadableItem(_stat_problem(Path(path), exc)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnreadableItem("not a regular file: never read")
    return os.fdopen(fd, "rb")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file's bytes (:func:`open_regular`'s checks)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
