"""The whole chain through `dvc repro` on a tiny image set, on CPU, in well under a minute."""

import json

import pandas as pd
import pytest
import torch

from .conftest import HALF_SPLIT, PROJECT_FILES, sh, tiny_project

pytestmark = pytest.mark.slow


def test_dvc_repro_runs_every_stage_then_nothing(tmp_path):
    work = tiny_project(tmp_path / "project", per_class=16, head_epochs=2,
                        edit=lambda p: p["split"].update(fractions=HALF_SPLIT),
                        files=tuple(f for f in PROJECT_FILES if f != ".gitignore"))

    log = sh("dvc", "repro", cwd=work)
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
        "log_loss", "log_loss_scaled", "ece",
        "accuracy_ci_low", "accuracy_ci_high", "macro_f1_ci_low", "macro_f1_ci_high",
        "train_seconds"}
    assert shown["run.json"] == {"train_seconds": run_record["train_seconds"]}
    assert (work / "reports/timings.html").exists()

    again = sh("dvc", "repro", cwd=work)
    assert "Running stage" not in again
