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

from pipeline.core.config import load_sections, with_changes
from pipeline.core.errors import run_stage
from pipeline.finetuning.members import train_and_evaluate
from pipeline.params.members import MembersConfig
from pipeline.params.model import ModelConfig
from pipeline.params.train import TrainConfig


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
