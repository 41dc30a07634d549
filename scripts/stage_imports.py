"""Which pipeline modules each DVC stage imports (its transitive closure, as DVC deps).

    python scripts/stage_imports.py            # stage -> modules
    python scripts/stage_imports.py --only-in train --not-in embed
        # modules the train stage imports that embed does not (training-only code)
    python scripts/stage_imports.py --rerun pipeline/engine.py
        # stages that declare the file, then every stage downstream of them in dvc.yaml

Reads the source with ``ast`` (nothing is imported); tests/test_dvc_yaml.py checks dvc.yaml with it.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path:
    return REPO / (name.replace(".", "/") + ".py")


def imports(path: Path) -> set[str]:
    """pipeline.* modules one file imports (``from pipeline import x`` included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}").exists()}
    return {m for m in found if module_file(m).exists()}


def closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imports(module_file(current)))
    return seen


def stage_files(stage: str) -> list[str]:
    return sorted(str(module_file(m).relative_to(REPO))
                  for m in closure(f"pipeline.stages.{stage}"))


def rerun(edited: str, stages: dict) -> list[str]:
    """Stages whose declared deps include ``edited``, plus all stages downstream."""
    hit = {s for s, spec in stages.items() if edited in spec.get("deps", [])}
    outs = {s: [next(iter(o)) if isinstance(o, dict) else o
                for key in ("outs", "metrics", "plots") for o in spec.get(key, [])]
            for s, spec in stages.items()}
    changed = True
    while changed:
        changed = False
        for s, spec in stages.items():
            if s not in hit and any(str(d).startswith(o) for h in list(hit)
                                    for o in outs[h] for d in spec.get("deps", [])):
                hit.add(s)
                changed = True
    return [s for s in stages if s in hit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only-in")
    parser.add_argument("--not-in")
    parser.add_argument("--rerun", nargs="*")
    parser.add_argument("--dvc-yaml", default=str(REPO / "dvc.yaml"))
    args = parser.parse_args()
    stages = yaml.safe_load(Path(args.dvc_yaml).read_text())["stages"]
    if args.rerun:
        for edited in args.rerun:
            print(f"{edited}: {', '.join(rerun(edited, stages)) or '-'}")
    elif args.only_in:
        other = set(stage_files(args.not_in)) if args.not_in else set()
        for f in stage_files(args.only_in):
            if f not in other:
                print(f)
    else:
        for stage in stages:
            print(f"{stage}: {' '.join(f.removeprefix('pipeline/') for f in stage_files(stage))}")


if __name__ == "__main__":
    main()
