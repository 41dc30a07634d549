"""evaluate stage: score the trained model on the test split.

Writes ``metrics/eval.json`` (accuracy, macro_f1) and ``metrics/predictions.csv``
(image_id, path, label, pred, one probability column per class), from which every
metric, and the confusion-matrix plot dvc.yaml declares, can be recomputed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score

from pipeline import paths
from pipeline.config import BaseConfig, EvaluateConfig, PipelineError, load_sections, run_stage
from pipeline.engine import load_split, predict
from pipeline.manifest import read_manifest
from pipeline.models import load_trained
from pipeline.seeding import resolve_device


def run(base: BaseConfig, cfg: EvaluateConfig, model_path: Path, cache_dir: Path,
        split_manifest: Path, metrics_out: Path, predictions_out: Path) -> dict[str, float]:
    """Predict every test image, write predictions and headline metrics."""
    device = resolve_device(base.device)
    model, prep, meta = load_trained(model_path)
    cache_meta = json.loads((cache_dir / "meta.json").read_text())
    if cache_meta["classes"] != meta["classes"]:
        raise PipelineError("the model's classes differ from the cache's: rerun dvc repro")
    test = load_split(cache_dir, "test", cache_meta["ids"]["test"])
    if len(test.labels) == 0:
        raise PipelineError("the test split is empty: give split.fractions.test > 0")
    model.to(device).to(memory_format=torch.channels_last)  # see engine.to_input
    probs = predict(model, test, prep=prep, device=device, batch_size=cfg.batch_size)
    classes = meta["classes"]
    pred = probs.argmax(1)
    metrics = {
        "accuracy": round(float(accuracy_score(test.labels, pred)), 6),
        "macro_f1": round(float(f1_score(test.labels, pred, average="macro",
                                         labels=np.arange(len(classes)), zero_division=0)), 6),
        "test_images": len(test.labels),
    }
    manifest = read_manifest(split_manifest).set_index("image_id")
    table = pd.DataFrame({
        "image_id": test.ids,
        "path": manifest.loc[list(test.ids), "path"].to_numpy(),
        "label": [classes[i] for i in test.labels],
        "pred": [classes[i] for i in pred],
    })
    for index, name in enumerate(classes):
        table[f"prob_{name}"] = np.round(probs[:, index], 6)
    predictions_out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(predictions_out, index=False, lineterminator="\n")
    metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
          f"on {metrics['test_images']} images")
    return metrics


def main() -> None:
    """Entry point of the DVC stage."""
    base, evaluate = load_sections("base", "evaluate")
    run(base, evaluate, paths.MODEL, paths.CACHE_DIR, paths.SPLIT,
        paths.METRICS_DIR / "eval.json", paths.PREDICTIONS)


if __name__ == "__main__":
    run_stage("evaluate", main)
