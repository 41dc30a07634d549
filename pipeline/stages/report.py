"""report stage: one self-contained HTML page (and PNGs) from what the stages wrote.

Reads the manifests, metrics, curves, the model's metadata and cached thumbnails; it
recomputes nothing another stage computed. Writes ``reports/report.html`` (images
embedded, opens offline), ``reports/confusion.png``, ``reports/reliability.png`` and
``reports/mistakes.png``, and ends with a closing summary of the run (pipeline.reporting.summary).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# The schemas of the sections the report shows (load_sections imports them by name):
# imported here so that dvc.yaml declares them (tests/test_dvc_yaml.py).
import pipeline.params.base  # noqa: F401
import pipeline.params.cache  # noqa: F401
import pipeline.params.clean  # noqa: F401
import pipeline.params.data  # noqa: F401
import pipeline.params.evaluate  # noqa: F401
import pipeline.params.model  # noqa: F401
import pipeline.params.split  # noqa: F401
import pipeline.params.train  # noqa: F401
from pipeline.core import paths
from pipeline.core.config import PARAMS_FILE, load_sections
from pipeline.core.errors import run_stage
from pipeline.reporting.page import body, figures, read_inputs, sample_grid, scaled_loss
from pipeline.reporting.report import page, timings_page
from pipeline.reporting.summary import PAGES, SUMMARY_LATER, summary_lines


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def params_vs_committed(current: dict[str, Any]) -> pd.DataFrame:
    """Params that differ from params.yaml as committed at git HEAD (the defaults this
    run started from); empty when there is no git history to compare with."""
    try:
        committed = subprocess.run(["git", "show", f"HEAD:{PARAMS_FILE}"], capture_output=True,
                                   text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return pd.DataFrame(columns=["key", "committed", "this run"])
    old, new = _flat(yaml.safe_load(committed) or {}), _flat(current)
    keys = sorted(k for k in old.keys() | new.keys() if str(old.get(k)) != str(new.get(k)))
    return pd.DataFrame({"key": keys, "committed": [str(old.get(k, "")) for k in keys],
                         "this run": [str(new.get(k, "")) for k in keys]})


def run(sections: dict[str, Any], clean: Path, split: Path, cache_dir: Path, model: Path,
        metrics_dir: Path, curves_dir: Path, out_dir: Path) -> Path:
    """Write the report and its PNGs; return the HTML path."""
    inp = read_inputs(clean, split, cache_dir, model, metrics_dir, curves_dir)
    inp.root = sections["data"].root
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = figures(inp, cache_dir)
    for name, data in pictures.items():
        (out_dir / f"{name}.png").write_bytes(data)
    changed = params_vs_committed(yaml.safe_load(PARAMS_FILE.read_text()))
    text = page(body(inp, sections, pictures, sample_grid(inp, cache_dir), changed))
    target = out_dir / "report.html"
    target.write_text(text)
    record = (json.loads(paths.RUN_RECORD_ALL.read_text())
              if paths.RUN_RECORD_ALL.exists() else {})
    (out_dir / "timings.html").write_text(timings_page(record))  # not a DVC output
    print(f"report: {target} ({len(text) / 1024:.0f} KiB)")
    if not os.environ.get(SUMMARY_LATER):  # python -m pipeline run prints it last
        results = {**inp.results, "log_loss_scaled": scaled_loss(inp)}
        print("\n".join(summary_lines(results, inp.clean_counts, inp.split_metrics,
                                      classes=len(inp.model_meta["classes"]),
                                      pages={**PAGES, "report": target})))
    return target


def main() -> None:
    """Entry point of the DVC stage."""
    # all sections: the report lists every param that differs from the committed ones
    names = ("base", "data", "clean", "split", "cache", "model", "train", "evaluate")
    sections = dict(zip(names, load_sections("base", "data", "clean", "split", "cache",
                                             "model", "train", "evaluate")))
    run(sections, paths.CLEAN, paths.SPLIT, paths.CACHE_DIR, paths.MODEL, paths.METRICS_DIR,
        paths.CURVES_DIR, paths.REPORTS_DIR)


if __name__ == "__main__":
    run_stage("report", main)
