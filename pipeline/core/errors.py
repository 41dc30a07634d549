"""User-facing errors and the stage runner: every module that only raises an error
depends on this small file, not on the params schema."""

from __future__ import annotations

import argparse
import ast
import errno
import inspect
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.core.files import declared_outputs, detach_links, free_bytes
from pipeline.core.heap import keep_freed_memory
from pipeline.core.provenance import record_run


class PipelineError(Exception):
    """An error in the user's input (params, data, weights) with a message meant for them."""


class ParamsError(PipelineError):
    """A key in params.yaml is unknown, missing, mistyped or out of range."""


def no_space_message(exc: OSError, outputs: Sequence[os.PathLike]) -> str:
    """One line for a full disk: the file (when the OS named it), the folder and its free
    space. Every output is written beside its path and renamed into place, so none is
    left half-written."""
    where = Path(exc.filename) if exc.filename else Path(next(iter(outputs), "."))
    folder = where if where.is_dir() else where.parent
    detail = (exc.strerror if exc.strerror and "No space left" not in exc.strerror else
              f"writing {where}, {free_bytes(folder) / 2**20:.0f} MiB free under "
              f"{folder.absolute()}")
    return (f"no space left on device ({detail}): free some space and rerun; the previous "
            f"outputs are unchanged")


def sections_read(main: Callable[[], None]) -> list[str]:
    """The params sections a stage's module passes to ``load_sections`` (read from its
    source, as tests/test_dvc_yaml.py does: nothing is loaded)."""
    source = inspect.getsourcefile(main)
    if source is None:
        return []
    with open(source) as fh:
        tree = ast.parse(fh.read())
    return [arg.value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_sections"
            for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]


def stage_arguments(name: str, main: Callable[..., None], argv: Sequence[str], *,
                    item: str = "", choices: Sequence[str] = ()) -> str:
    """A stage's command line: ``-h``/``--help`` prints what the stage does (its module
    docstring's first paragraph) and the params sections it reads, then exits 0 before
    any work; any other argument exits 2 (a stage's settings live in params.yaml).

    ``item`` names the one argument of a stage that dvc.yaml runs once per item of a
    params list (``foreach``), e.g. ``seed`` for ``member@<seed>``: an integer, or one of
    ``choices`` when given; its value is returned."""
    module = inspect.getmodule(main)
    doc = (module.__doc__ if module else None) or ""
    sections = sections_read(main)
    read = (f"params.yaml sections read: {', '.join(sections)} (the whole file is "
            f"validated when it starts)." if sections else "params.yaml sections read: none.")
    target = f"{name}@<{item}>" if item else name
    epilog = [read, f"Run it with `dvc repro {target}`: DVC reruns it only when its code, "
              f"data or params change. It takes no {'other ' if item else ''}arguments: set "
              f"params in params.yaml or with `dvc exp run -S section.key=value`."]
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.stages.{name}", description=doc.strip().split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(textwrap.fill(line, 88) for line in epilog))
    if item:
        parser.add_argument(item, type=str if choices else int, choices=choices or None,
                            help=f"the {item}: one item of the params list dvc.yaml runs "
                                 f"this stage for")
    known, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (a stage takes no "
                     f"arguments{f' but its {item}' if item else ''}: its settings are in "
                     f"params.yaml)")
    return str(getattr(known, item)) if item else ""


def run_stage(name: str, main: Callable[..., None], argv: Sequence[str] | None = None, *,
              item: str = "", choices: Sequence[str] = ()) -> None:
    """Run a stage's main(); user errors end it with one clear line and exit code 2.
    Large tensors come from the heap, freed memory is kept (:func:`keep_freed_memory`).

    ``argv`` (default: the command line) may only ask for ``--help``
    (:func:`stage_arguments`) and, with ``item``, give the item: then ``main(value)``
    runs, named ``name@value`` in messages and the run record."""
    value = stage_arguments(name, main, sys.argv[1:] if argv is None else argv, item=item,
                            choices=choices)
    stage = name
    if item:
        name = f"{name}@{value}"
    detached = detach_links(declared_outputs(stage, value))
    if detached:
        print(f"[{name}] {len(detached)} output file(s) were links into DVC's cache (e.g. "
              f"{detached[0]}): unlinked before writing, so the cache keeps its content "
              f"(dvc checkout restores it)", file=sys.stderr)
    keep_freed_memory()
    start = time.perf_counter()
    try:
        main(*([value if choices else int(value)] if item else []))
    except PipelineError as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        print(f"[{name}] error: {no_space_message(exc, declared_outputs(stage, value))}",
              file=sys.stderr)
        sys.exit(2)
    seconds = time.perf_counter() - start
    if os.environ.get("RANK", "0") == "0":  # one process of a torchrun job writes it
        record_run(name, {"seconds": seconds})  # metrics/all/run.json: never hashed
    print(f"[{name}] done in {seconds:.1f} s", file=sys.stderr)
