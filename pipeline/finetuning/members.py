"""Ensemble members and cross-validation folds: train one model and score it, into its
own files (the member and fold stages; :func:`pipeline.core.paths.member_model`,
:func:`pipeline.core.paths.member_metrics`), with the train and evaluate stages' own code.
"""

from __future__ import annotations

from typing import Any

from pipeline.contracts.cachefiles import ArraySplit
from pipeline.core import paths
from pipeline.finetuning.trainrun import train_model
from pipeline.params.base import BaseConfig
from pipeline.params.evaluate import EvaluateConfig
from pipeline.params.model import ModelConfig
from pipeline.params.train import TrainConfig
from pipeline.scoring.evaluation import evaluate_model


def train_and_evaluate(base: BaseConfig, model: ModelConfig, train: TrainConfig,
                       evaluate: EvaluateConfig, kind: str, item: int, *,
                       data: tuple[ArraySplit, ArraySplit] | None = None) -> dict[str, Any]:
    """Train one member and score it on test (and val), into its own files
    (:func:`pipeline.core.paths.member_model`, :func:`pipeline.core.paths.member_metrics`);
    ``data``: a cross-validation fold's (train, held-out) rows instead of train and val."""
    out_dir = paths.member_metrics(kind, item)
    model_out = paths.member_model(kind, item)
    train_model(base, model, train, paths.CACHE_DIR, model_out, out_dir / "train.json",
                out_dir / "curves", paths.member_checkpoints(kind, item), data=data)
    return evaluate_model(base, evaluate, model_out, paths.CACHE_DIR, paths.SPLIT, out_dir,
                          val=None if data is None else data[1])
