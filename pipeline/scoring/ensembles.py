"""Ensembles scored: the members' prediction tables read and stacked, their probabilities
averaged (``ensemble.average``: the normalised geometric mean or the mean), every
member and the ensemble scored with paired bootstrap intervals, the gain over the best
member picked on val, and for folds the held-out accuracy per fold and pooled. The
ensemble stage writes what this computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts.labelfiles import (
    prediction_arrays,
    prediction_classes,
    read_predictions,
)
from pipeline.contracts.manifest import read_folds
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.params.ensemble import EnsembleConfig
from pipeline.scoring.metrics import (
    apply_temperature,
    bootstrap_ci,
    calibrate_temperature,
    headline,
)

KINDS = ("seeds", "folds")


def read_member(kind: str, item: int, split: str) -> pd.DataFrame:
    """A member's prediction table of split test or val (as the evaluate stage wrote it)."""
    name = "predictions.csv" if split == "test" else "predictions_val.csv"
    path = paths.member_metrics(kind, item) / name
    if not path.exists():
        raise PipelineError(f"{path} not found: run the member's stage first (dvc repro)")
    return read_predictions(path)


def row_losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) negative log-likelihood of each row's label; their mean is headline's log_loss
    (probabilities clipped at 1e-12 and renormalised the same way)."""
    clipped = np.clip(probs, 1e-12, 1)
    clipped = clipped / clipped.sum(1, keepdims=True)
    return -np.log(clipped[np.arange(len(labels)), labels])


def scores(labels: np.ndarray, probs: np.ndarray, *, n: int, seed: int) -> dict[str, float]:
    """Accuracy, macro-F1, log-loss and ECE, with bootstrap intervals of accuracy and
    log-loss (seeded: every model of one report is resampled alike)."""
    out = {k: v for k, v in headline(labels, probs).items()
           if k in ("accuracy", "macro_f1", "log_loss", "ece")}
    per_row = {"accuracy": (probs.argmax(1) == labels).astype(float),
               "log_loss": row_losses(labels, probs)}
    for name, values in per_row.items():
        low, high = bootstrap_ci(labels, values, lambda _, v: float(v.mean()), n=n, seed=seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def stack(kind: str, items: list[int], split: str) -> tuple[pd.DataFrame, list[str],
                                                               np.ndarray, np.ndarray]:
    """The first member's table, the classes, (N,) labels and (M, N, C) probabilities of
    the members on one split; members must cover the same images in the same order."""
    tables = [read_member(kind, i, split) for i in items]
    first, classes = tables[0], prediction_classes(tables[0])
    for item, table in zip(items, tables):
        if (prediction_classes(table) != classes
                or list(table["image_id"]) != list(first["image_id"])):
            raise PipelineError(f"{kind} member {item} was scored on other images or classes "
                                f"than member {items[0]}: rerun dvc repro")
    labels = prediction_arrays(first, classes)[0]
    probs = np.stack([prediction_arrays(t, classes)[1] for t in tables])
    return first, classes, labels, probs


def average(probs: np.ndarray, rule: str) -> np.ndarray:
    """(M, N, C) member probabilities -> (N, C). ``probs``: their mean; ``log_probs``: the
    softmax of their mean log-probability, i.e. the normalised geometric mean (for
    softmax models the same as averaging logits). The mean of probabilities is less
    confident than its members wherever they disagree; trained with label smoothing they
    are all under-confident already, and the geometric mean keeps more of the confidence
    they share (README "Ensembles and cross-validation" has the measurements)."""
    if rule == "probs":
        return probs.mean(0)
    return apply_temperature(np.log(np.clip(probs, 1e-12, 1)).mean(0), 1.0)


def gain(labels: np.ndarray, base: np.ndarray, new: np.ndarray, *, n: int, seed: int
         ) -> tuple[float, float, float]:
    """Mean of the (N,) paired differences base - new, with its bootstrap interval."""
    low, high = bootstrap_ci(labels, base - new, lambda _, v: float(v.mean()), n=n, seed=seed)
    return float((base - new).mean()), low, high


def combine(kind: str, items: list[int], *, rule: str = "log_probs", bootstrap: int,
            seed: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """The report's numbers and the ensemble's test prediction table.

    The best member is the one with the lowest log-loss on its val predictions: picking
    it on test would favour whichever member the test rows happen to suit (of three
    similar models, the minimum of three noisy test scores), so the gain over the
    member best on test (``*_test_best``) is reported too, as an optimistic bound."""
    first, classes, labels, probs = stack(kind, items, "test")
    combined = average(probs, rule)
    kw: dict[str, Any] = dict(n=bootstrap, seed=seed)
    members = {str(i): scores(labels, p, **kw) for i, p in zip(items, probs)}
    ensemble = scores(labels, combined, **kw)
    # each member's val rows (for folds, each fold's own held-out rows)
    val = [prediction_arrays(read_member(kind, i, "val"), classes) for i in items]
    for i, (val_labels, val_probs) in zip(items, val):
        members[str(i)]["val_log_loss"] = float(row_losses(val_labels, val_probs).mean())
    best = min(items, key=lambda i: members[str(i)]["val_log_loss"])
    best_test = min(items, key=lambda i: members[str(i)]["log_loss"])
    out: dict[str, Any] = {"members": len(items), "test_images": len(labels), "average": rule,
                           "ensemble": ensemble, "member": members, "best_member": best,
                           "best_member_test": best_test}
    correct = (probs.argmax(2) == labels).astype(float)  # (M, N)
    for name, base, new in (
            ("log_loss_gain", row_losses(labels, probs[items.index(best)]),
             row_losses(labels, combined)),
            ("log_loss_gain_test_best", row_losses(labels, probs[items.index(best_test)]),
             row_losses(labels, combined)),
            ("accuracy_gain", (combined.argmax(1) == labels).astype(float),  # ensemble - best
             correct[items.index(best)])):
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = gain(labels, base, new, **kw)
    if kind == "seeds":
        out |= calibrated(kind, items, labels, probs, members, ensemble, rule=rule, **kw)
    else:
        out |= cross_validation(items, val, bootstrap=bootstrap, seed=seed)
    table = first[["image_id", "path", "label"]].assign(
        pred=[classes[k] for k in combined.argmax(1)])
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = combined[:, k]
    return out, table


def calibrated(kind: str, items: list[int], labels: np.ndarray, probs: np.ndarray,
               members: dict[str, dict[str, float]], ensemble: dict[str, float], *, rule: str,
               n: int, seed: int) -> dict[str, Any]:
    """Test log-loss after temperature scaling fitted on val (as the evaluate stage fits
    it), for each member and for the ensemble (its temperature fitted on the combined val
    probabilities), and the ensemble's gain over the best calibrated member, picked by
    its calibrated val log-loss (and, optimistic, by its test log-loss). Log-loss mostly
    measures calibration, which label smoothing and the epoch picked change from member
    to member; after scaling it compares what the models know. Seeds only: the members
    of folds have no val split in common."""
    _, _, val_labels, val_probs = stack(kind, items, "val")
    losses, val_losses = {}, {}
    for name, test_p, val_p, record in [
            *((str(i), probs[j], val_probs[j], members[str(i)]) for j, i in enumerate(items)),
            ("ensemble", average(probs, rule), average(val_probs, rule), ensemble)]:
        temperature, _ = calibrate_temperature(val_labels, val_p)
        losses[name], val_losses[name] = (row_losses(y, apply_temperature(
            np.log(np.clip(p, 1e-12, 1)), temperature)) for y, p in ((labels, test_p),
                                                                      (val_labels, val_p)))
        record["temperature"] = temperature
        record["log_loss_calibrated"] = float(losses[name].mean())
    best = min((str(i) for i in items), key=lambda i: val_losses[i].mean())
    best_test = min((str(i) for i in items), key=lambda i: losses[i].mean())
    out: dict[str, Any] = {"best_member_calibrated": int(best)}
    for name, member in (("calibrated_log_loss_gain", best),
                         ("calibrated_log_loss_gain_test_best", best_test)):
        out[name], out[f"{name}_ci_low"], out[f"{name}_ci_high"] = gain(
            labels, losses[member], losses["ensemble"], n=n, seed=seed)
    return out


def cross_validation(folds: list[int], held_out: list[tuple[np.ndarray, np.ndarray]], *,
                     bootstrap: int, seed: int) -> dict[str, Any]:
    """Each fold model on its held-out rows (``held_out``: its val labels and
    probabilities): accuracy and log-loss per fold, their mean and sample standard
    deviation across folds, and the accuracy of all held-out rows pooled, with its
    bootstrap interval."""
    labels, probs = [y for y, _ in held_out], [p for _, p in held_out]
    acc = np.array([(p.argmax(1) == y).mean() for y, p in zip(labels, probs)])
    loss = np.array([row_losses(y, p).mean() for y, p in zip(labels, probs)])
    pooled_y = np.concatenate(labels)
    correct = np.concatenate([(p.argmax(1) == y) for y, p in zip(labels, probs)]).astype(float)
    low, high = bootstrap_ci(pooled_y, correct, lambda _, v: float(v.mean()), n=bootstrap,
                             seed=seed)
    return {"cv_accuracy_mean": float(acc.mean()), "cv_accuracy_std": float(acc.std(ddof=1)),
            "cv_accuracy_min": float(acc.min()), "cv_accuracy_max": float(acc.max()),
            "cv_log_loss_mean": float(loss.mean()), "cv_log_loss_std": float(loss.std(ddof=1)),
            "cv_fold_accuracy": {str(k): float(a) for k, a in zip(folds, acc)},
            "oof_images": len(pooled_y), "oof_accuracy": float(correct.mean()),
            "oof_accuracy_ci_low": low, "oof_accuracy_ci_high": high}


def rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value


def summary(kind: str, out: dict[str, Any]) -> list[str]:
    """The log lines: each model's test scores with intervals, then the gains."""
    def line(name: str, s: dict[str, float]) -> str:
        return (f"  {name:<10} accuracy {s['accuracy']:.4f} [{s['accuracy_ci_low']:.4f}, "
                f"{s['accuracy_ci_high']:.4f}]  log-loss {s['log_loss']:.4f} "
                f"[{s['log_loss_ci_low']:.4f}, {s['log_loss_ci_high']:.4f}]")
    lines = [f"ensemble@{kind}: {out['members']} members on {out['test_images']} test images "
             f"(95 % bootstrap intervals)"]
    lines += [line(f"{kind[:-1]} {i}", s) for i, s in out["member"].items()]
    lines.append(line("ensemble", out["ensemble"]) + f"  ({out['average']} averaged)")
    lines.append(f"  gain over the member best on val ({out['best_member']}): log-loss "
                 f"{out['log_loss_gain']:+.4f} [{out['log_loss_gain_ci_low']:+.4f}, "
                 f"{out['log_loss_gain_ci_high']:+.4f}], accuracy {out['accuracy_gain']:+.4f} "
                 f"[{out['accuracy_gain_ci_low']:+.4f}, {out['accuracy_gain_ci_high']:+.4f}]; "
                 f"log-loss over the member best on test ({out['best_member_test']}): "
                 f"{out['log_loss_gain_test_best']:+.4f} "
                 f"[{out['log_loss_gain_test_best_ci_low']:+.4f}, "
                 f"{out['log_loss_gain_test_best_ci_high']:+.4f}]")
    if "calibrated_log_loss_gain" in out:
        lines.append("  after temperature scaling fitted on val, log-loss: " + ", ".join(
            f"{kind[:-1]} {i} {m['log_loss_calibrated']:.4f}" for i, m in out["member"].items())
            + f", ensemble {out['ensemble']['log_loss_calibrated']:.4f}; gain over the best "
            f"on val ({out['best_member_calibrated']}): {out['calibrated_log_loss_gain']:+.4f} "
            f"[{out['calibrated_log_loss_gain_ci_low']:+.4f}, "
            f"{out['calibrated_log_loss_gain_ci_high']:+.4f}], over the best on test: "
            f"{out['calibrated_log_loss_gain_test_best']:+.4f} "
            f"[{out['calibrated_log_loss_gain_test_best_ci_low']:+.4f}, "
            f"{out['calibrated_log_loss_gain_test_best_ci_high']:+.4f}]")
    if "cv_accuracy_mean" in out:
        lines.append(f"  cross-validation: held-out accuracy {out['cv_accuracy_mean']:.4f} "
                     f"+- {out['cv_accuracy_std']:.4f} (sd over {out['members']} folds, "
                     f"{out['cv_accuracy_min']:.4f}-{out['cv_accuracy_max']:.4f}); pooled "
                     f"{out['oof_accuracy']:.4f} [{out['oof_accuracy_ci_low']:.4f}, "
                     f"{out['oof_accuracy_ci_high']:.4f}] on {out['oof_images']} images")
    return lines


def members_of(kind: str, cfg: EnsembleConfig, split_manifest: Path) -> list[int]:
    """The member items: ensemble.seeds, or every fold of the split manifest."""
    if kind == "seeds":
        items = list(cfg.seeds)
    else:
        items = sorted(set(read_folds(split_manifest).values()))
    if len(items) < 2:
        raise PipelineError(f"ensemble@{kind} needs at least 2 members, got {items}")
    return items
