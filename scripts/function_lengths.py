"""The longest functions in pipeline/ (lines from ``def`` to the last line of the body).

    python scripts/function_lengths.py [--top 10] [--max 60]   # exit 1 above --max

tests/test_function_length.py holds pipeline/ to 60 lines.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lengths() -> list[tuple[int, str]]:
    out = []
    for path in sorted((REPO / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append((size, f"{path.relative_to(REPO)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--max", type=int, default=0)
    args = parser.parse_args()
    found = lengths()
    for size, where in found[:args.top]:
        print(f"{size:4d}  {where}")
    if args.max and found and found[0][0] > args.max:
        sys.exit(1)


if __name__ == "__main__":
    main()
