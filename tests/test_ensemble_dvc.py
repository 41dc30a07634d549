"""Ensembles and k-fold cross-validation as DVC stages, through `dvc exp run`, on CPU."""

import json

import pandas as pd
import pytest
import yaml

from .conftest import scratch_project, write_tree
from .test_end_to_end import _sh

pytestmark = pytest.mark.slow


def test_members_folds_and_their_combination_run_as_stages(tmp_path):
    work = scratch_project(tmp_path / "project")
    write_tree(work / "images", classes=3, per_class=12, size=24)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="images")
    params["split"]["fractions"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["cache"]["image_size"] = 32
    params["train"].update(batch_size=8, phases=[
        {"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 1, "unfreeze": "all", "lr_mult": 0.25}])
    params["evaluate"]["bootstrap"] = 200
    params["split"]["folds"] = []  # the defaults, whatever the workspace's params.yaml says
    params["ensemble"] = {"seeds": [], "combine": []}
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh("git", "init", "-q", cwd=work)
    _sh("git", "add", "-A", cwd=work)
    _sh("git", "commit", "-qm", "init", cwd=work)

    stages = _sh("dvc", "stage", "list", cwd=work)  # the defaults make none of them
    assert "member" not in stages and "fold" not in stages and "ensemble" not in stages

    # the combining stages and what they need (and evaluate, to compare with), not export
    log = _sh("dvc", "exp", "run", "-S", "ensemble.seeds=[0,1]", "-S", "split.folds=[0,1]",
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

    text = _sh("dvc", "exp", "show", "--md", cwd=work)
    for shown in ("metrics/seeds/1/eval.json", "metrics/folds/1/eval.json",
                  "cv_accuracy_mean", "cv_accuracy_std", "log_loss_gain"):
        assert shown in text

    again = _sh("dvc", "repro", "evaluate", "ensemble", cwd=work)
    assert "Running stage" not in again
