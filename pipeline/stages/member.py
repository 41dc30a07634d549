"""member stage: one model of a seed ensemble, trained and scored as the main model is.

dvc.yaml runs it once per item of ``ensemble.seeds`` (``member@<seed>``): the train
stage's run with ``train.seed`` set to the item, then the evaluate stage's run on that
model, writing ``models/seeds/<seed>.pt`` and under ``metrics/seeds/<seed>/`` the files
the main model gets (train.json, eval.json, predictions.csv, predictions_val.csv, ...).
``ensemble@seeds`` then averages the members' probabilities. A seed equal to
``train.seed`` gives the main model's weights again (training is deterministic), unless
section ``members`` gives that member train or model settings of its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline import paths
from pipeline.cachefiles import ArraySplit
from pipeline.config import load_sections, with_changes
from pipeline.errors import run_stage
from pipeline.params.base import BaseConfig
from pipeline.params.evaluate import EvaluateConfig
from pipeline.params.members import MembersConfig
from pipeline.params.model import ModelConfig
from pipeline.params.train import TrainConfig
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import train as train_stage


def train_and_evaluate(base: BaseConfig, model: ModelConfig, train: TrainConfig,
                       evaluate: EvaluateConfig, kind: str, item: int, *,
                       data: tuple[ArraySplit, ArraySplit] | None = None) -> dict[str, Any]:
    """Train one member and score it on test (and val), into its own files
    (:func:`pipeline.paths.member_model`, :func:`pipeline.paths.member_metrics`);
    ``data``: a cross-validation fold's (train, held-out) rows instead of train and val."""
    out_dir = paths.member_metrics(kind, item)
    model_out = paths.member_model(kind, item)
    train_stage.run(base, model, train, paths.CACHE_DIR, model_out, out_dir / "train.json",
                    out_dir / "curves", paths.member_checkpoints(kind, item), data=data)
    return evaluate_stage.run(base, evaluate, model_out, paths.CACHE_DIR, paths.SPLIT,
                              out_dir, val=None if data is None else data[1])


def member_settings(model: ModelConfig, train: TrainConfig, members: MembersConfig,
                    seed: int) -> tuple[ModelConfig, TrainConfig]:
    """Member ``seed``'s model and train settings: the sections' own, with train.seed set
    to ``seed`` and that member's keys from section ``members`` replaced."""
    own = {"model": members.model.get(seed, {}), "train": members.train.get(seed, {})}
    model = with_changes(model, own["model"], f"members.model.{seed}")
    train = with_changes(train, own["train"], f"members.train.{seed}")
    if own["model"] or own["train"]:
        print(f"member {seed}: its own settings {own}")
    return model, dataclasses.replace(train, seed=seed)


def main(seed: int) -> None:
    """Entry point of the DVC stage ``member@<seed>``."""
    base, model, train, evaluate, members = load_sections(
        "base", "model", "train", "evaluate", "members")
    model, train = member_settings(model, train, members, seed)
    train_and_evaluate(base, model, train, evaluate, "seeds", seed)


if __name__ == "__main__":
    run_stage("member", main, item="seed")
