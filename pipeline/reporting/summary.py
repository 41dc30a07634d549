"""The closing summary of a run, in under 20 lines: what ran, the headline test metrics
with their 95 % intervals, what clean and the leakage audit found, and where to look.

Printed at the end of the report stage (a plain ``dvc repro``), or by
``python -m pipeline run`` after DVC's closing lines, so that it is the last thing on
the screen; made from the metrics files only (the log-loss after temperature scaling
from the test predictions and eval.json's temperature).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.contracts.labelfiles import (
    prediction_arrays,
    prediction_classes,
    read_labelled,
    read_predictions,
)
from pipeline.contracts.manifest import ISSUES
from pipeline.core import paths
from pipeline.scoring.metrics import scaled_log_loss

SUMMARY_LATER = "PIPELINE_SUMMARY_LATER"  # set: the report stage leaves it to the caller
PAGES = {"report": paths.REPORTS_DIR / "report.html", "review": paths.REVIEW_PAGE,
         "leakage": paths.LEAKAGE_PAGE}
# clean.json numbers that are no count of problems found
NOT_FINDINGS = ("images", "kept", "embed_image_size", "fixed_eval_images", "fixed_eval_kept")
NAMES = {"clusters": "duplicate clusters", "decisions": "decisions applied"}


def _ci(results: Mapping[str, Any], name: str) -> str:
    """``0.985 [0.970, 0.996]``: a metric with its 95 % interval when there is one."""
    value = f"{results[name]:.3f}"
    if f"{name}_ci_low" in results:
        value += f" [{results[f'{name}_ci_low']:.3f}, {results[f'{name}_ci_high']:.3f}]"
    return value


def _test_lines(results: Mapping[str, Any], items: str = "images") -> list[str]:
    """The headline test metrics: two lines, one more with the values after temperature
    scaling, one more with test-time augmentation."""
    lines = [f"test ({results.get('test_images', '?')} {items}, 95 % intervals): accuracy "
             f"{_ci(results, 'accuracy')}, macro-F1 {_ci(results, 'macro_f1')}"]
    more = [f"{label} {results[key]:.3f}" for key, label in
            (("balanced_accuracy", "balanced accuracy"), ("log_loss", "log-loss"),
             ("ece", "ECE")) if key in results]
    # beside the raw ones: label smoothing makes the raw log-loss look worse than the
    # model is (log_loss_scaled: the report stage's, from the predictions)
    scaled = [f"{label} {results[key]:.3f}" for key, label in
              (("log_loss_scaled", "log-loss"), ("ece_calibrated", "ECE")) if key in results]
    lines.append("  " + ", ".join(more))
    if scaled:
        lines.append(f"  after temperature scaling (T = {results.get('temperature', 1.0):.2f}, "
                     f"fitted on val): " + ", ".join(scaled))
    if "tta_accuracy" in results:
        lines.append(f"  with test-time augmentation: accuracy {results['tta_accuracy']:.3f}, "
                     f"macro-F1 {results['tta_macro_f1']:.3f}")
    return lines


def _found(counts: Mapping[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{NAMES.get(k, k)} {counts[k]}" for k in keys)


def summary_lines(results: Mapping[str, Any], clean: Mapping[str, Any],
                  split: Mapping[str, Any], *, classes: int | str,
                  pages: Mapping[str, Path] = PAGES) -> list[str]:
    """The summary from metrics/all/eval.json, clean.json and split.json (as dicts)."""
    sizes = " / ".join(f"{s} {split[f'{s}_images']}" for s in ("train", "val", "test")
                       if f"{s}_images" in split)
    items = ("texts" if "not_utf8" in clean else  # clean counts per modality
             "items" if "noted" in clean else "images")
    lines = ["== summary " + "=" * 69,
             f"data: {clean.get('images', '?')} {items} in {classes} classes, "
             f"{clean.get('kept', '?')} kept by clean; split {sizes or '?'}"]
    lines += _test_lines(results, items)
    issues = [k for k in ISSUES if clean.get(k)]
    other = [k for k, v in clean.items() if k not in ISSUES and k not in NOT_FINDINGS
             and isinstance(v, int) and not isinstance(v, bool) and v]
    lines.append("clean found: " + (_found(clean, issues + other) if issues or other
                                    else "nothing"))
    leaks = [k for k, v in split.items() if k.startswith("leak_") and v]
    dropped = [k for k in ("dropped_from_train", "embargoed") if split.get(k)]
    lines.append("leakage audit: " + (_found(split, leaks + dropped) if leaks or dropped
                                      else "no leaks between train and val/test"))
    lines.append("look at:")
    lines += [f"  {name:8} {path}" for name, path in pages.items()]
    return lines


def read_summary(metrics_dir: Path = paths.METRICS_DIR,
                 pages: Mapping[str, Path] = PAGES) -> list[str]:
    """The summary of the last run, from the metrics files it wrote."""
    def read(name: str) -> dict[str, Any]:  # every number, not only the headline
        return dict(json.loads((metrics_dir / "all" / name).read_text()))

    results = read("eval.json")
    per_class = metrics_dir / "per_class.csv"  # one row per class
    classes = len(read_labelled(per_class, ["class"])) if per_class.exists() else "?"
    predictions = metrics_dir / "predictions.csv"
    if predictions.exists():
        table = read_predictions(predictions)
        labels, probs = prediction_arrays(table, prediction_classes(table))
        results["log_loss_scaled"] = scaled_log_loss(labels, probs,
                                                     float(results.get("temperature", 1.0)))
    return summary_lines(results, read("clean.json"), read("split.json"), classes=classes,
                         pages=pages)
