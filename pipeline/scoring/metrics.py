"""Classification metrics from labels and probabilities: pure functions, no file I/O.

Every number the evaluate stage reports comes from here, computed from the prediction
tables it writes, so anyone can recompute them from those files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

ECE_BINS = 15


def headline(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro/weighted F1, top-5 (more than 5 classes),
    log loss and ECE for (N,) int labels and (N, C) probabilities."""
    n_classes = probs.shape[1]
    preds = probs.argmax(1)
    everything = np.arange(n_classes)
    out = {
        "accuracy": skm.accuracy_score(labels, preds),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
        "macro_f1": skm.f1_score(labels, preds, average="macro", labels=everything,
                                 zero_division=0),
        "weighted_f1": skm.f1_score(labels, preds, average="weighted", labels=everything,
                                    zero_division=0),
    }
    if n_classes > 5:
        out["top5_accuracy"] = skm.top_k_accuracy_score(labels, probs, k=5, labels=everything)
    # rows of a prediction file sum to 1 only up to its printed precision
    clipped = np.clip(probs, 1e-12, 1)
    out["log_loss"] = skm.log_loss(labels, clipped / clipped.sum(1, keepdims=True),
                                   labels=everything)
    out["ece"] = expected_calibration_error(labels, probs)
    return {k: float(v) for k, v in out.items()}


def reliability(labels: np.ndarray, probs: np.ndarray, *, n_bins: int = ECE_BINS
                ) -> pd.DataFrame:
    """Per equal-width confidence bin: count, mean confidence and accuracy of the top class."""
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 goes to bin 0
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        rows.append({"bin": b, "lower": b / n_bins, "upper": (b + 1) / n_bins,
                     "count": int(mask.sum()),
                     "confidence": float(confidence[mask].mean()) if mask.any() else np.nan,
                     "accuracy": float(correct[mask].mean()) if mask.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, *,
                               n_bins: int = ECE_BINS) -> float:
    """ECE: sum over bins of (bin share) * |accuracy - mean confidence|, top-class."""
    table = reliability(labels, probs, n_bins=n_bins).dropna()
    gaps = (table["accuracy"] - table["confidence"]).abs()
    return float((table["count"] * gaps).sum() / len(labels))


# Temperatures searched; a fit that ends on a bound is degenerate (see calibrate_temperature)
TEMPERATURE_BOUNDS = (0.1, 10.0)
MIN_VAL_IMAGES = 20  # fewer val images than this cannot estimate a temperature


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(log(probs) / T) (Guo et al. 2017),
    searched within TEMPERATURE_BOUNDS.

    log(probs) differs from the logits by a per-row constant, which softmax ignores, so
    the fit needs only the probabilities the prediction files hold.
    """
    log_p = np.log(np.clip(probs, 1e-12, 1))

    def nll(log_t: float) -> float:
        return skm.log_loss(labels, apply_temperature(log_p, float(np.exp(log_t))),
                            labels=np.arange(probs.shape[1]))

    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def calibrate_temperature(labels: np.ndarray, probs: np.ndarray) -> tuple[float, str]:
    """The temperature to apply and, when scaling is skipped (T = 1), why.

    On a val split the model gets entirely right the NLL keeps falling as T -> 0, so a
    fit would make the model as overconfident as the search allows; a tiny val split
    says too little, and a fit that ends on a bound of TEMPERATURE_BOUNDS is no minimum.
    Each of these keeps T = 1 and returns the reason; otherwise the reason is "".
    """
    if len(labels) < MIN_VAL_IMAGES:
        return 1.0, (f"temperature scaling skipped (T = 1): {len(labels)} val images, "
                     f"fewer than {MIN_VAL_IMAGES}")
    if (probs.argmax(1) == labels).all():
        return 1.0, (f"temperature scaling skipped (T = 1): the model gets all "
                     f"{len(labels)} val images right, so val cannot estimate a temperature")
    temperature = fit_temperature(labels, probs)
    low, high = TEMPERATURE_BOUNDS
    if not low * 1.01 < temperature < high / 1.01:
        return 1.0, (f"temperature scaling skipped (T = 1): the fit on val ran to the bound "
                     f"T = {temperature:.3g} of [{low:g}, {high:g}]")
    return temperature, ""


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log_probs / T), row-wise, (N, C) -> (N, C)."""
    z = log_probs / temperature
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def scaled_log_loss(labels: np.ndarray, probs: np.ndarray, temperature: float) -> float:
    """Log-loss of (N, C) ``probs`` after temperature scaling, softmax(log(probs) / T), for
    (N,) int labels: with the T evaluate fitted on val, the test log-loss beside the raw
    one. Label smoothing trains a model to stay under-confident, which raises the raw
    log-loss even where the ranking is right; scaled, it measures what the model knows.
    At T = 1 it equals headline's ``log_loss``."""
    scaled = apply_temperature(np.log(np.clip(probs, 1e-12, 1)), temperature)
    return float(skm.log_loss(labels, scaled, labels=np.arange(probs.shape[1])))


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray,
                 metric: Callable[[np.ndarray, np.ndarray], float], *, n: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of metric(labels, preds) over n resamples."""
    rng = np.random.default_rng(seed)
    size = len(labels)
    values = [metric(labels[idx], preds[idx])
              for idx in (rng.integers(0, size, size) for _ in range(n))]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def per_class(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support of every class (zero where undefined)."""
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, preds, labels=np.arange(len(classes)), zero_division=0)
    return pd.DataFrame({"class": list(classes), "precision": p, "recall": r, "f1": f,
                         "support": s})


def one_vs_rest_curves(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
                       ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """Long tables of ROC (fpr, tpr) and PR (recall, precision) points per class, and the
    ROC AUC and average precision of each (classes absent from labels are skipped)."""
    roc_rows, pr_rows, scores = [], [], {}
    for k, name in enumerate(classes):
        truth = labels == k
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = skm.roc_curve(truth, probs[:, k])
        precision, recall, _ = skm.precision_recall_curve(truth, probs[:, k])
        auc = skm.roc_auc_score(truth, probs[:, k])
        ap = skm.average_precision_score(truth, probs[:, k])
        scores[f"roc_auc_{name}"], scores[f"average_precision_{name}"] = auc, ap
        roc_rows.append(pd.DataFrame({"curve": f"{name} (AUC {auc:.3f})", "fpr": fpr,
                                      "tpr": tpr}))
        pr_rows.append(pd.DataFrame({"curve": f"{name} (AP {ap:.3f})", "recall": recall,
                                     "precision": precision}))
    return pd.concat(roc_rows), pd.concat(pr_rows), {k: float(v) for k, v in scores.items()}
