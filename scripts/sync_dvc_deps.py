"""Rewrite each stage's ``pipeline/`` deps in dvc.yaml from its real import closure
(``scripts/stage_imports.py``), keep its other deps, and make ``requirements.lock`` a
dep of every stage. Run after adding or removing an import in a stage's closure;
tests/test_dvc_yaml.py fails until dvc.yaml matches.

    python scripts/sync_dvc_deps.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK_DEP = "      - requirements.lock  # library versions shape every result"


def closures() -> dict[str, list[str]]:
    """Stage name -> the pipeline/ files it imports."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "stage_imports.py")],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    found = {}
    for line in out.splitlines():
        name, _, modules = line.partition(": ")
        found[name] = sorted("pipeline/" + m for m in modules.split())
    return found


def main() -> None:
    imports = closures()
    lines = (REPO / "dvc.yaml").read_text().split("\n")
    out: list[str] = []
    stage, i = None, 0
    while i < len(lines):
        line = lines[i]
        match = re.match(r"^  ([a-z_]+):$", line)
        if match:
            stage = match.group(1)
        if line == "    deps:" and stage in imports:
            out.append(line)
            i += 1
            rest = []
            while i < len(lines) and lines[i].startswith("      - "):
                item = lines[i]
                if not item.startswith("      - pipeline/") and "requirements.lock" not in item:
                    rest.append(item)
                i += 1
            out += ["      - " + m for m in imports[stage]] + [LOCK_DEP] + rest
            continue
        out.append(line)
        i += 1
    (REPO / "dvc.yaml").write_text("\n".join(out))


if __name__ == "__main__":
    main()
