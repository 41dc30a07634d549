"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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
    full.write_text(json.dumps(dict(values), indent=2) + "\n")
    path.write_text(json.dumps({k: values[k] for k in headline}, indent=2) + "\n")
