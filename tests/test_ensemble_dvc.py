"""Ensembles and k-fold cross-validation as DVC stages, through `dvc exp run`, on CPU."""

import json

import pandas as pd
import pytest

from .conftest import HALF_SPLIT, sh, tiny_project

pytestmark = pytest.mark.slow


def test_members_folds_and_their_combination_run_as_stages(tmp_path):
    def edit(params: dict) -> None:
        params["split"]["fractions"] = HALF_SPLIT
        params["evaluate"]["bootstrap"] = 200
        params["split"]["folds"] = []  # the defaults, whatever the workspace's params.yaml says
        params["ensemble"] = {"seeds": [], "combine": []}
    work = tiny_project(tmp_path / "project", per_class=12, edit=edit)

    stages = sh("dvc", "stage", "list", cwd=work)  # the defaults make none of them
    assert "member" not in stages and "fold" not in stages and "ensemble" not in stages

    # the combining stages and what they need (and evaluate, to compare with), not export
    log = sh("dvc", "exp", "run", "-S", "ensemble.seeds=[0,1]", "-S", "split.folds=[0,1]",
              "-S", "ensemble.combine=[seeds,folds]", "evaluate", "ensemble", cwd=work)
    for stage in ("member@0", "member@1", "fold@0", "fold@1", "ensemble@seeds",
                  "ensemble@folds", "train", "evaluate"):
        assert f"Running stage '{stage}'" in log

    # the two folds hold out every train and val image once, and never a test image
    split = pd.read_csv(work / "data/split/manifest.csv", dtype=str)
    pool = set(split.loc[split["split"] != "test", "image_id"])
    held = [set(pd.read_csv(work / f"metrics/folds/{k}/predictions_val.csv")["image_id"])
            for k in (0, 1)]
    assert held[0] | held[1] == pool and not held[0] & held[1]
    assert set(split.loc[split["split"] == "test", "fold"]) == {"-1"}
    test_ids = list(pd.read_csv(work / "metrics/predictions.csv")["image_id"])
    for path in ("metrics/seeds/1/predictions.csv", "metrics/folds/0/predictions.csv"):
        assert list(pd.read_csv(work / path)["image_id"]) == test_ids

    seeds = json.loads((work / "metrics/ensemble/seeds.json").read_text())
    folds = json.loads((work / "metrics/ensemble/folds.json").read_text())
    assert seeds["members"] == 2 and set(seeds["member"]) == {"0", "1"}
    assert seeds["test_images"] == len(test_ids)
    assert folds["oof_images"] == len(pool) and set(folds["cv_fold_accuracy"]) == {"0", "1"}
    assert 0 <= folds["cv_accuracy_std"] and 0 <= folds["cv_accuracy_mean"] <= 1
    # member@0 trains with the main model's seed: the same weights, so the same scores
    main = json.loads((work / "metrics/eval.json").read_text())
    member = json.loads((work / "metrics/seeds/0/eval.json").read_text())
    assert member["log_loss"] == main["log_loss"]

    text = sh("dvc", "exp", "show", "--md", cwd=work)
    for shown in ("metrics/seeds/1/eval.json", "metrics/folds/1/eval.json",
                  "cv_accuracy_mean", "cv_accuracy_std", "log_loss_gain"):
        assert shown in text

    again = sh("dvc", "repro", "evaluate", "ensemble", cwd=work)
    assert "Running stage" not in again
