"""The whole chain through `dvc repro` on a tiny image set, on CPU, in well under a minute."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from .conftest import PROJECT_FILES, scratch_project, write_tree

pytestmark = pytest.mark.slow


def _sh(*args: str, cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_dvc_repro_runs_every_stage_then_nothing(tmp_path):
    work = scratch_project(tmp_path / "project",
                           files=tuple(f for f in PROJECT_FILES if f != ".gitignore"))
    write_tree(work / "images", classes=3, per_class=16, size=24)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="images")
    params["split"]["fractions"] = {"train": 0.5, "val": 0.25, "test": 0.25}
    params["cache"]["image_size"] = 32
    params["train"].update(batch_size=8, phases=[
        {"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 1, "unfreeze": "all", "lr_mult": 0.25}])
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh("git", "init", "-q", cwd=work)
    _sh("git", "add", "-A", cwd=work)
    _sh("git", "commit", "-qm", "init", cwd=work)

    log = _sh("dvc", "repro", cwd=work)
    for stage in ("demo", "prepare", "embed", "clean", "split", "cache", "train", "evaluate",
                  "export", "report"):
        assert f"Running stage '{stage}'" in log

    split = pd.read_csv(work / "data/split/manifest.csv")
    assert split["split"].value_counts().to_dict() == {"train": 24, "val": 12, "test": 12}
    checkpoint = torch.load(work / "models/model.pt", weights_only=True)
    assert checkpoint["meta"]["classes"] == ["c0", "c1", "c2"]
    assert checkpoint["meta"]["pretrained"]["weights"].startswith("package:")
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert metrics["accuracy"] >= 0.5 and set(metrics) >= {"accuracy", "macro_f1"}
    predictions = pd.read_csv(work / "metrics/predictions.csv")
    assert list(predictions.columns) == ["image_id", "path", "label", "pred",
                                         "prob_c0", "prob_c1", "prob_c2"]
    assert len(predictions) == 12
    page = (work / "reports/report.html").read_text()
    assert "Fine-tuning report" in page and page.count("data:image/png;base64,") >= 6

    run_record = json.loads((work / "metrics/all/run.json").read_text())  # wall times:
    assert run_record["train_seconds"] > 0 and run_record["report_seconds"] > 0  # here, in
    assert "seconds" not in (work / "metrics/all/train.json").read_text()  # no hashed output
    # the DVC metrics files: only the columns dvc exp show should display
    shown = {name: json.loads((work / "metrics" / name).read_text())
             for name in ("clean.json", "split.json", "train.json", "eval.json", "run.json")}
    assert {k for values in shown.values() for k in values} == {
        "kept", "leaks", "best_epoch", "best_val_accuracy", "accuracy", "macro_f1",
        "log_loss", "ece",
        "accuracy_ci_low", "accuracy_ci_high", "macro_f1_ci_low", "macro_f1_ci_high",
        "train_seconds"}
    assert shown["run.json"] == {"train_seconds": run_record["train_seconds"]}
    assert (work / "reports/timings.html").exists()

    again = _sh("dvc", "repro", cwd=work)
    assert "Running stage" not in again
