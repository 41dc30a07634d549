"""pipeline/core/paths.py and dvc.yaml must name the same files: a stage that writes where
dvc.yaml does not look (or the reverse) leaves DVC tracking the wrong thing."""

from pathlib import Path

import yaml

from pipeline.core import paths

from .conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Outputs that need not be DVC outs (issue 13 stops tracking the resume checkpoint).
NOT_TRACKED = {str(paths.CHECKPOINT_DIR), str(paths.RUN_RECORD), str(paths.RUN_RECORD_ALL),
               str(paths.REPORTS_DIR)}


def _declared() -> set[str]:
    found = set()
    for spec in STAGES.values():
        for key in ("deps", "outs", "metrics", "plots"):
            for entry in spec.get(key, []):
                name = next(iter(entry)) if isinstance(entry, dict) else entry
                if not name.startswith(("pipeline/", "${")):
                    found.add(name.rstrip("/"))
    return found


def _related(a: str, b: str) -> bool:
    """The same path, or one a folder holding the other."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _named() -> set[str]:
    return {str(v) for v in vars(paths).values() if isinstance(v, Path)}


def test_every_path_in_paths_py_is_a_dvc_dep_or_out():
    declared = _declared()
    for name in _named() - NOT_TRACKED:
        assert any(_related(name, d) for d in declared), name


def test_every_dvc_dep_and_out_is_named_in_paths_py():
    named = _named()
    for name in _declared():
        # files a stage names inside a named folder (metrics/*.json, models/model.*) count
        assert any(_related(name, n) for n in named | {str(paths.MODEL.parent)}), name
