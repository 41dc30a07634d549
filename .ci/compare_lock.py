"""CI check: a run reproduced the committed record.

Compares two dvc.lock files entry by entry (every stage's deps, params and outs) and
prints each one that differs, with the old and new hash; for a differing JSON metrics
file that git tracks, also the keys whose values changed. Exit status 1 when anything
differs, so CI fails and says which outputs did not reproduce.

Usage: compare_lock.py COMMITTED_LOCK NEW_LOCK
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import yaml


def entries(lock_path: str) -> dict[str, Any]:
    """``{"stage: deps|outs: path": hash}`` and ``{"stage: params: file": values}``."""
    with open(lock_path) as f:
        lock = yaml.safe_load(f) or {}
    out: dict[str, Any] = {}
    for stage, spec in (lock.get("stages") or {}).items():
        for kind in ("deps", "outs"):
            for entry in spec.get(kind, []):
                out[f"{stage}: {kind}: {entry['path']}"] = (
                    entry.get("md5") or entry.get("hash"), entry.get("size"))
        for params_file, values in (spec.get("params") or {}).items():
            out[f"{stage}: params: {params_file}"] = values
    return out


def changed_keys(path: str) -> str:
    """For a git-tracked JSON file: the keys whose values differ from HEAD's copy."""
    try:
        old = json.loads(subprocess.run(["git", "show", f"HEAD:{path}"], check=True,
                                        capture_output=True, text=True).stdout)
        with open(path) as f:
            new = json.load(f)
    except (OSError, ValueError, subprocess.CalledProcessError):
        return ""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys[:8])


def main(committed: str, new: str) -> int:
    """Print every differing entry; return the exit status."""
    a, b = entries(committed), entries(new)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for key in differ:
        print(f"CI: not reproduced: {key}: committed {a.get(key)} != this run {b.get(key)}")
        path = key.split(": ", 2)[2]
        if path.endswith(".json") and ": outs: " in key:
            detail = changed_keys(path)
            if detail:
                print(f"CI:   {detail}")
    if differ:
        print(f"CI: {len(differ)} of {len(a)} dvc.lock entries differ from the committed "
              f"record", file=sys.stderr)
        return 1
    print(f"CI: all {len(a)} dvc.lock entries (deps, params, outs) match the committed record")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
