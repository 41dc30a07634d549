"""Compare the outs of two dvc.lock files: which output hashes are the same.

    python scripts/compare_locks.py BEFORE.lock AFTER.lock
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def outs(path: str) -> dict[str, str]:
    stages = yaml.safe_load(Path(path).read_text())["stages"]
    return {f"{stage}: {o['path']}": o.get("md5", "?")
            for stage, spec in stages.items() for o in spec.get("outs", [])}


def main() -> None:
    before, after = outs(sys.argv[1]), outs(sys.argv[2])
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key, "-"), after.get(key, "-")
        print(f"{'same   ' if a == b else 'DIFFERS'} {key}  {a[:12]} {b[:12]}")


if __name__ == "__main__":
    main()
