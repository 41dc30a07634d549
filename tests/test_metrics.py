import math

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.finetuning.engine import tta_views
from pipeline.scoring.evaluation import compute, gate
from pipeline.scoring.metrics import (
    apply_temperature,
    bootstrap_ci,
    calibrate_temperature,
    expected_calibration_error,
    fit_temperature,
    headline,
    one_vs_rest_curves,
    per_class,
)

from .conftest import repo_params

LABELS = np.array([0, 0, 1, 1])
PROBS = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])


def test_known_answers():
    out = headline(LABELS, PROBS)
    assert out["accuracy"] == 0.5 and out["balanced_accuracy"] == 0.5
    assert out["macro_f1"] == 0.5 and out["weighted_f1"] == 0.5
    assert out["log_loss"] == pytest.approx(-(math.log(.9) + math.log(.4) + math.log(.8)
                                              + math.log(.3)) / 4, abs=1e-12)
    # four singleton bins: |1-.9|, |0-.6|, |1-.8|, |0-.7|
    assert out["ece"] == pytest.approx(0.4, abs=1e-12)
    assert "top5_accuracy" not in out
    table = per_class(LABELS, PROBS.argmax(1), ["a", "b"])
    assert table[["precision", "recall", "f1"]].to_numpy().tolist() == [[0.5] * 3, [0.5] * 3]
    assert table["support"].tolist() == [2, 2]


def test_top5_for_more_than_five_classes():
    probs = np.eye(7)[[0, 1, 2]] * 0.4 + 0.6 / 7
    probs[2] = np.array([0.3, 0.25, 0.2, 0.1, 0.05, 0.05, 0.05])  # true class 2 ranks third
    out = headline(np.array([0, 1, 2]), probs)
    assert out["top5_accuracy"] == 1.0 and out["accuracy"] == pytest.approx(2 / 3)


def test_temperature_recovers_a_planted_overconfidence():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 4)) * 2
    true_probs = apply_temperature(logits, 1.0)
    labels = np.array([rng.choice(4, p=p) for p in true_probs])
    overconfident = apply_temperature(logits, 1 / 2.5)  # logits * 2.5
    temperature = fit_temperature(labels, overconfident)
    assert temperature == pytest.approx(2.5, rel=0.05)
    calibrated = apply_temperature(np.log(overconfident), temperature)
    assert expected_calibration_error(labels, calibrated) < 0.5 * expected_calibration_error(
        labels, overconfident)


@pytest.mark.parametrize("n, errors, reason", [
    (200, 0, "the model gets all 200 val images right"),  # perfectly separated val
    (10, 2, "10 val images, fewer than 20"),  # too small to say anything
])
def test_temperature_scaling_is_skipped_where_it_would_run_away(n, errors, reason):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, n)
    logits = rng.normal(size=(n, 12))
    logits[np.arange(n), labels] += 6  # confident and right...
    logits[np.arange(errors), (labels[:errors] + 1) % 12] += 12  # ...but for `errors` rows
    probs = apply_temperature(logits, 1.0)
    assert fit_temperature(labels, probs) < 0.2 or errors  # what an unguarded fit does
    temperature, note = calibrate_temperature(labels, probs)
    assert temperature == 1.0
    assert note.startswith("temperature scaling skipped (T = 1): ") and reason in note


def test_temperature_scaling_is_fitted_when_val_can_tell():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 4)) * 2
    labels = np.array([rng.choice(4, p=p) for p in apply_temperature(logits, 1.0)])
    temperature, note = calibrate_temperature(labels, apply_temperature(logits, 0.5))
    assert note == "" and 1.5 < temperature < 3


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    preds = np.where(rng.random(300) < 0.8, labels, 1 - labels)
    acc = float((labels == preds).mean())
    low, high = bootstrap_ci(labels, preds, lambda y, p: float((y == p).mean()), n=500, seed=3)
    assert low < acc < high and high - low < 0.15
    assert (low, high) == bootstrap_ci(labels, preds, lambda y, p: float((y == p).mean()),
                                       n=500, seed=3)


def test_curves_skip_classes_absent_from_the_labels():
    roc, pr, scores = one_vs_rest_curves(np.array([0, 0, 1]), np.array(
        [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]), ["a", "b", "c"])
    assert scores["roc_auc_a"] == 1.0 and "roc_auc_c" not in scores
    assert set(roc["curve"]) == {"a (AUC 1.000)", "b (AUC 1.000)"} and len(pr)


def test_tta_views():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    assert len(tta_views(x, "none")) == 1
    flipped = tta_views(x, "flip")
    assert torch.equal(flipped[1], x.flip(-1))
    crops = tta_views(x, "crops")
    assert len(crops) == 5 and all(c.shape == x.shape for c in crops)
    assert torch.equal(crops[0], x)  # the centre crop of the padded copy is the image


def test_gates_fail_with_the_metric_and_the_limit():
    (cfg,) = parse_sections(repo_params(**{"evaluate.min_accuracy": 0.99,
                                           "evaluate.max_ece": 0.05}), "evaluate")
    with pytest.raises(PipelineError, match=r"accuracy 0\.9000 is below evaluate\.min_accuracy "
                                            r"= 0\.99; ECE 0\.1000 is above evaluate\.max_ece"):
        gate(cfg, {"accuracy": 0.9, "ece": 0.1})
    gate(cfg, {"accuracy": 0.995, "ece": 0.01})


def test_hand_made_prediction_files_give_exact_metrics(tmp_path):
    rows = "image_id,path,label,pred,prob_a,prob_b\n" + "\n".join(
        f"i{k},x{k}.png,{lab},{pred},{pa},{1 - pa:.1f}" for k, (lab, pred, pa) in enumerate(
            [("a", "a", 0.9), ("a", "b", 0.4), ("b", "b", 0.2), ("b", "a", 0.7)]))
    (tmp_path / "test.csv").write_text(rows + "\n")
    frame = pd.read_csv(tmp_path / "test.csv", dtype={"label": str})
    results, table, curves = compute(frame, frame, ["a", "b"], bootstrap=200, seed=0,
                                     tta=False)
    assert results["accuracy"] == 0.5 and results["macro_f1"] == 0.5
    assert results["ece"] == pytest.approx(0.4, abs=1e-12)
    assert results["test_images"] == 4
    assert table["f1"].tolist() == [0.5, 0.5]
    assert set(curves) == {"roc", "pr", "reliability"}
