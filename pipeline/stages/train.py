"""train stage: fine-tune the backbone on the cache in phases; write models/model.pt,
metrics/train.json and the training curves (:mod:`pipeline.finetuning.trainrun` runs it: the
schedule, checkpoints, resuming, torchrun).
"""

from __future__ import annotations

from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import run_stage
from pipeline.finetuning.trainrun import train_model


def main() -> None:
    """Entry point of the DVC stage."""
    base, model, train = load_sections("base", "model", "train")
    train_model(base, model, train, paths.CACHE_DIR, paths.MODEL,
                paths.METRICS_DIR / "train.json", paths.CURVES_DIR, paths.CHECKPOINT_DIR)


if __name__ == "__main__":
    run_stage("train", main)
