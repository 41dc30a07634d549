"""Evaluation of a trained model (the evaluate stage, ensemble members and folds): score it
on the test split, calibrate on val.

Writes the prediction tables first (``metrics/predictions.csv`` for test,
``metrics/predictions_val.csv`` for val: image_id, path, label, pred, one probability
column per class; with ``evaluate.tta`` also tta_pred and tta_prob_*), then computes
every number from those tables as written: ``metrics/all/eval.json`` (the metrics,
95 % bootstrap intervals, ECE before and after temperature scaling fitted on val; the
headline ones also in ``metrics/eval.json``),
``metrics/per_class.csv`` and the curve tables under ``metrics/plots/``.

Labels are written as :mod:`pipeline.contracts.labelfiles` says: a class name a spreadsheet would
run as a formula gets a leading ``'``, and ``&``, ``<``, ``>`` become HTML entities (DVC
copies these files into its plots page), in the label and pred cells and in the
``prob_<class>`` column names alike, so every metric is recomputable from the files as
written; ``read_predictions`` gives the class names back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score
from tqdm import tqdm

from pipeline.contracts.cachefiles import ArraySplit, open_split, read_meta
from pipeline.contracts.labelfiles import (
    prediction_arrays,
    read_predictions,
    write_labelled,
    write_predictions,
)
from pipeline.contracts.manifest import read_manifest
from pipeline.contracts.modelfile import load_trained
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_metrics
from pipeline.core.seeding import resolve_device
from pipeline.finetuning.engine import predict
from pipeline.modality import BatchAdapter, Rows
from pipeline.modality.models import meta_modality, model_input
from pipeline.params.base import BaseConfig
from pipeline.params.evaluate import EvaluateConfig
from pipeline.scoring.metrics import (
    apply_temperature,
    bootstrap_ci,
    calibrate_temperature,
    expected_calibration_error,
    headline,
    one_vs_rest_curves,
    per_class,
    reliability,
    scaled_log_loss,
)


class CountingInput:
    """A batch adapter (pipeline.modality.BatchAdapter) that moves a progress bar by each
    batch it prepares: the prediction loop's progress, the loop itself unchanged."""

    def __init__(self, inputs: BatchAdapter, bar: tqdm) -> None:
        self.inputs, self.bar = inputs, bar

    def to_input(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The wrapped adapter's model input; the bar advances by the batch's size."""
        self.bar.update(len(batch))
        return self.inputs.to_input(batch, device)

    def lengths(self, rows: Rows) -> np.ndarray | None:
        """The wrapped adapter's row lengths."""
        return self.inputs.lengths(rows)


# what metrics/eval.json keeps for dvc exp show (test split); every number goes
# to metrics/all/eval.json (pipeline.core.files.write_metrics)
HEADLINE = ("accuracy", "macro_f1", "log_loss", "log_loss_scaled", "ece", "accuracy_ci_low",
            "accuracy_ci_high", "macro_f1_ci_low", "macro_f1_ci_high")


def prediction_table(data: ArraySplit, probs: np.ndarray, classes: list[str],
                     manifest: pd.DataFrame, prefix: str = "") -> pd.DataFrame:
    """image_id, path, label, pred and one probability column per class."""
    table = pd.DataFrame({"image_id": data.ids,
                          "path": manifest.loc[list(data.ids), "path"].to_numpy(),
                          "label": [classes[i] for i in data.labels]})
    table[f"{prefix}pred"] = [classes[i] for i in probs.argmax(1)]
    for index, name in enumerate(classes):
        table[f"{prefix}prob_{name}"] = probs[:, index]
    return table


def _macro_f1(n_classes: int) -> Any:
    return lambda y, p: f1_score(y, p, average="macro", labels=np.arange(n_classes),
                                 zero_division=0)


def compute(test: pd.DataFrame, val: pd.DataFrame, classes: list[str], *, bootstrap: int,
            seed: int, tta: bool) -> tuple[dict[str, Any], pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every reported number from the prediction tables: eval.json's dict, the per-class
    table and the curve tables (roc, pr, reliability)."""
    labels, probs = prediction_arrays(test, classes)
    preds = probs.argmax(1)
    out: dict[str, Any] = headline(labels, probs)
    for name, fn in (("accuracy", accuracy_score), ("macro_f1", _macro_f1(len(classes)))):
        low, high = bootstrap_ci(labels, preds, fn, n=bootstrap, seed=seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    val_labels, val_probs = prediction_arrays(val, classes)
    temperature, skipped = calibrate_temperature(val_labels, val_probs)
    calibrated = apply_temperature(np.log(np.clip(probs, 1e-12, 1)), temperature)
    out["temperature"] = temperature
    if skipped:  # the reason, shown by dvc metrics show and the report
        out["temperature_note"] = skipped
        print(f"warning: {skipped}", file=sys.stderr)
    out["ece_calibrated"] = expected_calibration_error(labels, calibrated)
    # beside the raw log-loss, which label smoothing inflates (dvc exp show, exps)
    out["log_loss_scaled"] = scaled_log_loss(labels, probs, temperature)
    if tta:
        tta_labels, tta_probs = prediction_arrays(test, classes, prefix="tta_")
        tta_headline = headline(tta_labels, tta_probs)
        out["tta_accuracy"] = tta_headline["accuracy"]
        out["tta_macro_f1"] = tta_headline["macro_f1"]
    roc, pr, scores = one_vs_rest_curves(labels, probs, classes)
    out["test_images"] = len(labels)
    rel = pd.concat([
        reliability(labels, probs).assign(curve="before calibration"),
        reliability(labels, calibrated).assign(curve=f"temperature {temperature:.2f}")])
    curves = {"roc": roc, "pr": pr, "reliability": rel.dropna()}
    table = per_class(labels, preds, classes)
    table["roc_auc"] = [scores.get(f"roc_auc_{c}", np.nan) for c in classes]
    table["average_precision"] = [scores.get(f"average_precision_{c}", np.nan) for c in classes]
    return out, table, curves


def write_scores(test: pd.DataFrame, val: pd.DataFrame, classes: list[str], out_dir: Path, *,
                 bootstrap: int, seed: int, tta: bool) -> dict[str, Any]:
    """Write the prediction tables, then every number computed from the files as written
    (so anyone can recompute them): eval.json, per_class.csv, plots/*.csv. Returns the
    metrics, rounded as written."""
    files = {"test": out_dir / "predictions.csv", "val": out_dir / "predictions_val.csv"}
    write_predictions(test, files["test"])
    write_predictions(val, files["val"])
    results, table, curves = compute(read_predictions(files["test"]),
                                     read_predictions(files["val"]), classes,
                                     bootstrap=bootstrap, seed=seed, tta=tta)
    results = {k: round(v, 6) if isinstance(v, float) else v for k, v in results.items()}
    write_metrics(out_dir / "eval.json", results, HEADLINE)
    write_labelled(table, out_dir / "per_class.csv", ["class"], float_format="%.6g")
    for name, frame in curves.items():
        write_labelled(frame, out_dir / "plots" / f"{name}.csv", ["curve"],
                       float_format="%.6g")
    return results


def evaluate_model(base: BaseConfig, cfg: EvaluateConfig, model_path: Path, cache_dir: Path,
        split_manifest: Path, out_dir: Path, *, val: ArraySplit | None = None
        ) -> dict[str, Any]:
    """Predict val and test, write the tables, metrics and curves under ``out_dir``.

    ``val``: rows to use instead of the cache's val split (a cross-validation fold's
    held-out rows, :func:`pipeline.contracts.cachefiles.fold_splits`)."""
    device = resolve_device(base.device)
    model, prep, meta = load_trained(model_path)
    cache_meta = read_meta(cache_dir)
    classes = meta["classes"]
    if cache_meta.classes != classes:
        raise PipelineError("the model's classes differ from the cache's: rerun dvc repro")
    if cfg.tta != "none" and cache_meta.modality != "image":
        raise PipelineError(f"evaluate.tta = {cfg.tta} flips and crops images; this project "
                            f"classifies {cache_meta.modality}s: set evaluate.tta: none")
    test = open_split(cache_dir, cache_meta, "test")
    val = open_split(cache_dir, cache_meta, "val") if val is None else val
    if len(test.labels) == 0 or len(val.labels) == 0:
        raise PipelineError("the test and val splits must not be empty: give "
                            "split.fractions.test and split.fractions.val > 0")
    model.to(device).to(memory_format=torch.channels_last)  # see inputs.to_input
    manifest = read_manifest(split_manifest).set_index("image_id")
    adapter = model_input(model, prep, meta_modality(meta))  # the model's modality's

    def probs(data: ArraySplit, name: str, tta: str = "none") -> np.ndarray:
        with tqdm(total=len(data.labels), desc=f"predict {name}", unit="img",
                  mininterval=1.0, leave=False) as bar:
            return predict(model, data, device=device, batch_size=cfg.batch_size,
                           tta=tta, inputs=CountingInput(adapter, bar))

    test_table = prediction_table(test, probs(test, "test"), classes, manifest)
    if cfg.tta != "none":
        tta_table = prediction_table(test, probs(test, f"test {cfg.tta}", cfg.tta), classes,
                                     manifest, "tta_")
        test_table = test_table.join(tta_table.filter(regex="^tta_"))
    val_table = prediction_table(val, probs(val, "val"), classes, manifest)
    results = write_scores(test_table, val_table, classes, out_dir, bootstrap=cfg.bootstrap,
                           seed=base.seed, tta=cfg.tta != "none")
    print(f"test accuracy {results['accuracy']:.4f} "
          f"[{results['accuracy_ci_low']:.4f}, {results['accuracy_ci_high']:.4f}], "
          f"macro-F1 {results['macro_f1']:.4f}, ECE {results['ece']:.4f} -> "
          f"{results['ece_calibrated']:.4f} at temperature {results['temperature']:.3f}, "
          f"on {results['test_images']} images")
    gate(cfg, results)
    return results


def gate(cfg: EvaluateConfig, results: dict[str, Any]) -> None:
    """Fail when a metric misses its threshold in params (after the outputs are written)."""
    failures = []
    if results["accuracy"] < cfg.min_accuracy:
        failures.append(f"test accuracy {results['accuracy']:.4f} is below "
                        f"evaluate.min_accuracy = {cfg.min_accuracy}")
    if results["ece"] > cfg.max_ece:
        failures.append(f"ECE {results['ece']:.4f} is above evaluate.max_ece = {cfg.max_ece}")
    if failures:
        raise PipelineError("; ".join(failures))
