"""User-facing errors and the stage runner: every module that only raises an error
depends on this small file, not on the params schema."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from pipeline.provenance import record_run


class PipelineError(Exception):
    """An error in the user's input (params, data, weights) with a message meant for them."""


class ParamsError(PipelineError):
    """A key in params.yaml is unknown, missing, mistyped or out of range."""


def run_stage(name: str, main: Callable[[], None]) -> None:
    """Run a stage's main(); user errors end it with one clear line and exit code 2."""
    start = time.perf_counter()
    try:
        main()
    except PipelineError as exc:
        print(f"[{name}] error: {exc}", file=sys.stderr)
        sys.exit(2)
    seconds = time.perf_counter() - start
    record_run(name, {"seconds": seconds})  # metrics/run.json: never a hashed output
    print(f"[{name}] done in {seconds:.1f} s", file=sys.stderr)
