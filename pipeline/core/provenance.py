"""What made a result: library versions, the lock, the CPU code path (hashed outputs), and
the run record of wall times, machine and commit (``metrics/all/run.json``, never hashed).

Two kinds of facts, kept apart on purpose. Those that decide the numbers (versions, the
lock's hash, the kernels, the thread count, the device) are saved inside models and
metrics, so the same commit and lock give the same bytes. Those that change on every run
or machine (wall times, host, the git commit, which cannot sit inside a file that the
commit itself records) go to ``metrics/all/run.json``, read by the report; the train
stage's time is copied to ``metrics/run.json``, the one that ``dvc metrics show`` and
``dvc exp show`` display. Both are listed at the top level of ``dvc.yaml`` rather than as a
stage output, so no hash in ``dvc.lock`` depends on the clock.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from pipeline.core.paths import LOCK as LOCK_FILE
from pipeline.core.paths import RUN_RECORD

RUN_HEADLINE = ("train_seconds",)  # what metrics/run.json keeps for dvc exp show
LIBRARIES = ["torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn"]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results, saved with models and metrics."""
    return {n: importlib.metadata.version(n) for n in LIBRARIES}


def lock_hash(path: Path = LOCK_FILE) -> str:
    """sha256 of the dependency lock the environment was installed from ('' if absent)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def environment(device: str, cpu: dict[str, Any]) -> dict[str, Any]:
    """The facts that decide a result's numbers, for a model's or a metrics file's meta.

    ``cpu`` is what :func:`pipeline.core.seeding.pin_cpu` returned (kernels, threads, pins).
    """
    return {"versions": library_versions(), "lock_sha256": lock_hash(),
            "python": ".".join(platform.python_version_tuple()[:2]), "device": device, **cpu}


def git_commit() -> str:
    """The checked-out commit, with ``+dirty`` when tracked files differ ('' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def record_run(stage: str, values: dict[str, float], *, path: Path = RUN_RECORD) -> None:
    """Merge one stage's wall times (``{stage}_{key}``) into the run record
    (``all/<name>`` beside ``path``), with the machine and commit they were measured on,
    and copy its headline times to ``path``. Never a DVC output: see the module doc."""
    full = path.parent / "all" / path.name
    record = json.loads(full.read_text()) if full.exists() else {}
    if "seconds" not in values:  # a stage's detailed times replace its previous ones
        record = {k: v for k, v in record.items()
                  if not k.startswith(f"{stage}_") or k == f"{stage}_seconds"}
    record.update({f"{stage}_{k}": float(f"{v:.4g}") for k, v in values.items()})
    record.update({"git_commit": git_commit(), "host": platform.node(),
                   "cpu": platform.processor() or platform.machine(),
                   "cores": os.cpu_count() or 0})
    headline = {k: record[k] for k in RUN_HEADLINE if k in record}
    full.parent.mkdir(parents=True, exist_ok=True)
    for target, values in ((full, record), (path, headline)):
        tmp = target.with_suffix(f".{os.getpid()}.tmp")  # no two writers share one
        tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        tmp.replace(target)
