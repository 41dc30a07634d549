"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error
    the file is flushed to disk and renamed over ``path`` in one step, so a kill or a
    full disk leaves the previous file (or none), never a truncated one."""
    path = Path(path)
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
