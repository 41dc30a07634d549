"""The clean stage's rules, apart from its file writing: the near-copy rule (calibrated on
the embed stage's copies, or an explicit threshold), detection of every issue from the
embed stage's pass, the policies (a fixed val/test set only flagged, duplicate clusters
that straddle it losing their train side), a person's decisions, the review list, the
counts and the rate limits that fail the stage.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.contracts import calibfiles
from pipeline.contracts.embedfiles import (
    SIGNALS,
    EmbedMeta,
    read_copies,
    read_signals,
    signal_names,
)
from pipeline.contracts.manifest import (
    ISSUES,
    check_two_classes,
    empty_class_folders,
)
from pipeline.core.errors import PipelineError
from pipeline.dataquality.calibrate import (
    Calibration,
    Search,
    calibrate,
    copy_similarities,
    distinct_similarities,
    near_copy_clusters,
    search,
)
from pipeline.dataquality.quality import (
    LabelCheck,
    conflicting_clusters,
    exact_duplicate_clusters,
    label_issues,
    near_duplicate_clusters,
    neighbours,
    outlier_scores,
    outliers,
)
from pipeline.modality.image.signals import Signal, as_signals
from pipeline.params.clean import CleanConfig
from pipeline.params.data import DataConfig

ACTIONS = "keep, drop or relabel:<label>"
ISSUE_ORDER = {name: i for i, name in enumerate(ISSUES)}




def read_decisions(path: Path, ids: set[str]) -> dict[str, str]:
    """image_id -> action from a person's decisions file (missing file: none)."""
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != ["image_id", "action"]:
        raise PipelineError(f"{path} must have the columns image_id,action")
    for image_id, action in zip(table["image_id"], table["action"]):
        if image_id not in ids:
            raise PipelineError(f"{path}: image_id {image_id!r} is not in the manifest")
        if action not in ("keep", "drop") and not (action.startswith("relabel:")
                                                   and len(action) > len("relabel:")):
            raise PipelineError(f"{path}: action {action!r} for {image_id}: use {ACTIONS}")
    twice = table[table["image_id"].duplicated(keep=False)]
    if len(twice):
        image_id = twice["image_id"].iloc[0]
        rows = [str(i + 2) for i in twice.index[twice["image_id"] == image_id]]
        actions = ", ".join(twice["action"][twice["image_id"] == image_id])
        raise PipelineError(f"{path}: image_id {image_id} has {len(rows)} decisions (lines "
                            f"{', '.join(rows)}: {actions}); keep one line per image")
    return dict(zip(table["image_id"], table["action"]))


@dataclass(frozen=True)
class NearRule:
    """The calibrated near-copy rule and the signals it applies to (row-aligned)."""

    calibration: Calibration
    signals: list[Signal]  # per name in embedfiles.SIGNALS, row-aligned
    searches: list[Search]  # each signal's clean.neighbours nearest neighbours, searched once


def calibrate_near_copies(cfg: CleanConfig, embed_dir: Path, hashes: list[str | None],
                          valid: np.ndarray) -> NearRule:
    """clean.near_duplicate_threshold = auto: the OR rule calibrated on the embed stage's
    synthetic copies of the user's images (pipeline.dataquality.calibrate)."""
    names = signal_names(embed_dir)
    signals = as_signals(read_signals(embed_dir), names)
    stored_copies, source, kinds = read_copies(embed_dir)
    copies = as_signals(stored_copies, names)
    if not len(source):
        raise PipelineError("the embed stage made no calibration copies (no item decoded)")
    searches = search(signals, k=cfg.neighbours, exact_max=cfg.exact_search_max,
                      probes=cfg.search_probes)
    distinct, owner = distinct_similarities(signals, rows=np.flatnonzero(valid),
                                            hashes=hashes, searches=searches)
    cal = calibrate(copy_similarities(signals, copies, source), distinct, signals=names,
                    owner=owner, kinds=kinds, max_false_rate=cfg.max_false_rate)
    return NearRule(cal, signals, searches)


def explicit_rule(threshold: float, names: tuple[str, ...] = SIGNALS) -> Calibration:
    """An explicit clean.near_duplicate_threshold as a rule: the embeddings only."""
    return Calibration(names, (threshold,) + (math.inf,) * (len(names) - 1), 0.0, 0.0,
                       True, note=f"set: embedding cosine >= {threshold:g}, not calibrated")


@dataclass
class Findings:
    """What the detectors found, row-aligned with the prepared manifest."""

    found: dict[str, np.ndarray]  # issue name -> (N,) bool, in ISSUES order
    scores: dict[str, np.ndarray]  # issue name -> (N,) float, higher: more suspicious
    clusters: list[str | None]  # exact or near-duplicate cluster id
    exact: list[str | None]  # exact-duplicate (equal pixels) cluster id, None for none
    quality: np.ndarray  # (N,) float label quality, NaN where not scored
    suggested: np.ndarray  # (N,) str, cleanlab's suggested label where it flags one
    # the label check's probe and each probe's accuracy on the given labels (clean.json)
    label_metrics: dict[str, Any] = field(default_factory=dict)


VOTE_SIGNALS = ("embedding", "thumbnail")  # signals whose neighbours vote on labels


def vote_searches(cfg: CleanConfig, embed_dir: Path, ids: list[str], embeddings: np.ndarray,
                  rule: NearRule | None) -> dict[str, Search]:
    """Each :data:`VOTE_SIGNALS` signal's clean.neighbours nearest neighbours, row-aligned
    with ``ids``: the calibrated rule's searches, else searched here (the embeddings, and
    the thumbnails of images)."""
    if rule is not None:
        names = rule.calibration.signals
        return {n: rule.searches[names.index(n)] for n in VOTE_SIGNALS if n in names}
    names = signal_names(embed_dir)
    arrays = {"embedding": embeddings}
    if "thumbnail" in names:
        arrays["thumbnail"] = read_signals(embed_dir, ids, ("thumbnail",))[0]
    return {name: neighbours(x, k=cfg.neighbours, exact_max=cfg.exact_search_max,
                             probes=cfg.search_probes) for name, x in arrays.items()}


def check_labels(df: pd.DataFrame, cfg: CleanConfig, embeddings: np.ndarray,
                 valid: np.ndarray, searches: dict[str, Search]) -> LabelCheck:
    """cleanlab's likely label errors among the valid rows (:func:`label_issues`, its
    probes by clean.label_probe, the k-NN votes over ``searches``); logged with what
    each probe scored and cost, and returned row-aligned with ``df``."""
    rows = np.flatnonzero(valid)
    if cfg.label_probe.startswith("knn_") and cfg.label_probe[4:] not in searches:
        raise PipelineError(f"clean.label_probe: {cfg.label_probe}: this data has no "
                            f"{cfg.label_probe[4:]} signal; its searches: "
                            f"{', '.join(f'knn_{n}' for n in searches)}, or logistic, lda")
    local = np.full(len(valid), -1)
    local[rows] = np.arange(len(rows))
    votes = {name: (local[index[rows]], sims[rows]) for name, (index, sims) in searches.items()}
    check = label_issues(embeddings[rows], list(df["label"].iloc[rows]),
                         folds=cfg.label_folds, seed=0, filter_by=cfg.label_method,
                         probes=cfg.probes_for(len(rows), tuple(votes)), dims=cfg.probe_dims,
                         votes=votes)
    if check.note:
        print(f"warning: {check.note}", file=sys.stderr)
    if check.probe:
        print(f"clean: {check.summary()}")
    n = len(valid)
    mask, quality = np.zeros(n, dtype=bool), np.full(n, np.nan)
    suggested = np.full(n, "", dtype=object)
    mask[rows], quality[rows], suggested[rows] = check.mask, check.quality, check.suggested
    return replace(check, mask=mask, quality=quality, suggested=suggested)


def detect(df: pd.DataFrame, cfg: CleanConfig, embeddings: np.ndarray,
           hashes: list[str | None], valid: np.ndarray, searches: dict[str, Search],
           rule: NearRule | None = None, lengths: list[int] | None = None,
           scripts: list[str] | None = None) -> Findings:
    """Run every detector on the embed stage's features and pixel hashes (near copies:
    by the calibrated ``rule`` when given, else clean.near_duplicate_threshold;
    ``searches``: :func:`vote_searches`; ``lengths``, ``scripts``: a text project's
    lengths and scripts, for its outliers)."""
    ids = list(df["image_id"])
    exact = exact_duplicate_clusters(hashes, order=ids)
    index, sims = searches["embedding"]
    if rule is not None:
        near = near_copy_clusters(rule.signals, rule.calibration, k=cfg.neighbours,
                                  exact_max=cfg.exact_search_max, probes=cfg.search_probes,
                                  order=ids, valid=valid, searches=rule.searches)
    else:
        near = near_duplicate_clusters(index, sims, threshold=float(
            cfg.near_duplicate_threshold), order=ids, valid=valid)
    clusters = [n if n is not None else e for n, e in zip(near, exact)]
    exact_dup = np.array([e is not None and e != i for e, i in zip(exact, ids)])
    near_dup = np.array([c is not None and c != i for c, i in zip(clusters, ids)]) & ~exact_dup
    conflicting = conflicting_clusters(clusters, list(df["label"]))
    check = check_labels(df, cfg, embeddings, valid, searches)
    outlier = outlier_scores(sims)
    odd, rule_text = outliers(outlier, valid, cfg.outlier_threshold, lengths=lengths,
                              scripts=scripts)
    print(f"clean: outliers: {rule_text}")
    found = dict(zip(ISSUES, (~valid, exact_dup, near_dup, conflicting, check.mask, odd)))
    ones = np.ones(len(ids))
    ranking = dict(zip(ISSUES, (ones, ones, sims[:, 0] if sims.shape[1] else ones, ones,
                                1 - np.nan_to_num(check.quality, nan=0.0), outlier)))
    return Findings(found, ranking, clusters, list(exact), check.quality, check.suggested,
                    check.metrics())


def policy(cfg: CleanConfig, issue: str) -> str:
    """``drop`` or ``flag``: what clean.* says to do with an issue (unreadable: drop)."""
    return {"unreadable": "drop", "exact_duplicate": cfg.exact_duplicates,
            "near_duplicate": cfg.near_duplicates, "conflicting_labels": cfg.conflicting_labels,
            "label_issue": cfg.label_issues, "outlier": cfg.outliers}[issue]


def fixed_rows(df: pd.DataFrame) -> np.ndarray:
    """(N,) bool: rows of a fixed evaluation set, those the source put in val/ or test/
    (folders or the split column). Clean may flag them, never drop them (DESIGN rule 12)."""
    if "split" not in df:
        return np.zeros(len(df), dtype=bool)
    return df["split"].isin(["val", "test"]).to_numpy()


def aim_at_train_side(findings: Findings, fixed: np.ndarray) -> np.ndarray:
    """Make the train side the copy in every duplicate cluster that holds both train and
    fixed val/test rows (in place), and return (N,) bool: those train rows.

    Without fixed rows a cluster keeps its smallest image_id and flags the others. In a
    cluster that straddles train and a fixed evaluation set, every member is flagged
    instead (``exact_duplicate`` where it has an identical-pixel twin in the cluster,
    ``near_duplicate`` otherwise), so the drop policies remove all of its train members
    and none of its val/test members.
    """
    clusters = findings.clusters
    n = len(clusters)
    if not fixed.any():
        return np.zeros(n, dtype=bool)
    has_fixed = {c for c, f in zip(clusters, fixed) if c is not None and f}
    has_train = {c for c, f in zip(clusters, fixed) if c is not None and not f}
    straddling = np.array([c is not None and c in has_fixed & has_train for c in clusters],
                          dtype=bool)
    twins = np.array([e is not None for e in findings.exact], dtype=bool)
    exact, near = findings.found["exact_duplicate"], findings.found["near_duplicate"]
    exact[straddling] = twins[straddling]
    near[straddling] = ~twins[straddling]
    return straddling & ~fixed


def apply_policies(findings: Findings, cfg: CleanConfig, fixed: np.ndarray | None = None
                   ) -> tuple[np.ndarray, list[list[str]]]:
    """(N,) keep and each row's issue names, by the policies.

    ``fixed`` (N,) bool marks rows of a fixed evaluation set: every issue but
    ``unreadable`` only flags them, whatever its policy.
    """
    n = len(findings.clusters)
    fixed = np.zeros(n, dtype=bool) if fixed is None else fixed
    issues: list[list[str]] = [[] for _ in range(n)]
    keep = np.ones(n, dtype=bool)
    for name, found in findings.found.items():
        for i in np.flatnonzero(found):
            issues[i].append(name)
        if policy(cfg, name) == "drop":
            keep &= ~(found if name == "unreadable" else found & ~fixed)
    return keep, issues


def apply_decisions(verdicts: dict[str, str], ids: list[str], keep: np.ndarray,
                    labels: list[str], unreadable: np.ndarray) -> None:
    """A person's decisions override the detectors (in place): keep, drop, relabel."""
    for row, image_id in enumerate(ids):
        action = verdicts.get(image_id, "")
        if action == "drop":
            keep[row] = False
        elif action:
            keep[row] = not unreadable[row]
            if action.startswith("relabel:"):
                labels[row] = action.split(":", 1)[1]


def review_table(df: pd.DataFrame, out: pd.DataFrame, findings: Findings) -> pd.DataFrame:
    """The ranked review list: one row per (image, issue), most suspicious first."""
    ids = list(df["image_id"])
    review = pd.DataFrame([{"image_id": ids[i], "path": df["path"].iloc[i], "issue": name,
                            "score": float(findings.scores[name][i]),
                            "label": df["label"].iloc[i],
                            "suggested_label": out["suggested_label"].iloc[i],
                            "decision": out["decision"].iloc[i]}
                           for name, found in findings.found.items()
                           for i in np.flatnonzero(found)],
                          columns=["image_id", "path", "issue", "score", "label",
                                   "suggested_label", "decision"])
    return review.sort_values(["issue", "score", "image_id"], ascending=[True, False, True],
                              key=lambda c: c.map(ISSUE_ORDER) if c.name == "issue" else c)


def rate_limits(counts: dict[str, int], cfg: CleanConfig) -> list[str]:
    """The issues whose share of images is above clean.max_rate, described."""
    n = counts["images"]
    return [f"{name}: {counts[name] / n:.1%} of images, limit "
            f"clean.max_rate.{name} = {getattr(cfg.max_rate, name):.1%}"
            for name in ISSUES if counts[name] / n > getattr(cfg.max_rate, name)]


def near_rule(cfg: CleanConfig, embed_dir: Path, hashes: list[str | None], valid: np.ndarray,
              calibration: Path) -> tuple[NearRule | None, dict[str, float | bool | str]]:
    """The near-copy rule (calibrated for ``auto``, else None), written to ``calibration``
    for the split stage, and its numbers for metrics/all/clean.json; logged, loudly when
    nothing separates copies from distinct images."""
    if cfg.near_duplicate_threshold != "auto":
        calibfiles.write(calibration, explicit_rule(float(cfg.near_duplicate_threshold),
                                                    signal_names(embed_dir)),
                         calibrated=False)
        return None, {}
    start = time.perf_counter()
    rule = calibrate_near_copies(cfg, embed_dir, hashes, valid)
    cal = rule.calibration
    calibfiles.write(calibration, cal, calibrated=True)
    print(f"clean: {cal.summary()} [calibrated in {time.perf_counter() - start:.1f} s]")
    if not cal.separable or cal.missed_kinds():
        print(f"WARNING: near-copy detection: {cal.note}", file=sys.stderr)
    return rule, cal.metrics("near_duplicate")


def data_notes(data: DataConfig, rel_paths: list[str], notes: list[str]) -> list[str]:
    """What the data leaves out without an issue: empty class folders (no class) and
    frames after the first of animated or multi-page images; for the log and the page."""
    found = [f"{rel}: {note}" for rel, note in zip(rel_paths, notes) if note]
    if data.source != "csv":
        found += [f"{folder}/: empty class folder, no class"
                  for folder in empty_class_folders(Path(data.root))]
    return found


def final_checks(out: pd.DataFrame, counts: dict[str, int], cfg: CleanConfig,
                 review_html: Path) -> None:
    """Fail (after the outputs are written, so the review page shows why) when too much
    is wrong: an issue above its clean.max_rate, no kept image, fewer than two classes."""
    if too_many := rate_limits(counts, cfg):
        raise PipelineError("too many problems in the data (see " + str(review_html) +
                            "): " + "; ".join(too_many))
    kept = out[out["keep"]]
    if kept.empty:
        raise PipelineError(f"clean kept none of the {len(out)} images (see {review_html})")
    check_two_classes(kept["label"], f"clean kept (see {review_html})")


def clean_counts(findings: Findings, keep: np.ndarray, verdicts: dict[str, str],
                 embed_meta: EmbedMeta, notes: list[str], fixed: np.ndarray,
                 train_copies: np.ndarray) -> dict[str, Any]:
    """clean.json's numbers: images, kept, each issue, clusters, decisions, data notes,
    and what clean left of a fixed val/test set."""
    counts: dict[str, Any] = {"images": len(keep), "kept": int(keep.sum())}
    counts |= {name: int(found.sum()) for name, found in findings.found.items()}
    counts["clusters"] = int(len({c for c in findings.clusters if c is not None}))
    counts["decisions"] = len(verdicts)
    noted = sum(bool(n) for n in embed_meta.notes)  # frames left out; texts: not UTF-8
    # what the notes say: frames left out, texts not UTF-8, another modality's own notes
    counts[{"image": "multi_frame", "text": "not_utf8"}.get(embed_meta.modality, "noted")] = noted
    counts["empty_class_folders"] = len(notes) - noted
    if fixed.any():  # a fixed val/test set: what clean left of it, what it took from train
        counts["fixed_eval_images"] = int(fixed.sum())
        counts["fixed_eval_kept"] = int((fixed & keep).sum())
        counts["train_copies_of_eval_dropped"] = int((train_copies & ~keep).sum())
    if embed_meta.modality == "image":
        counts["embed_image_size"] = embed_meta.image_size
    return counts | findings.label_metrics


def print_summary(counts: dict[str, Any], fixed: np.ndarray, rel_paths: list[str],
                  errors: list[str], notes: list[str]) -> None:
    """The stage's log: what it kept and found, each unreadable file, each data note."""
    items = ("texts" if "not_utf8" in counts else  # clean counts per modality
             "items" if "noted" in counts else "images")
    print(f"clean: kept {counts['kept']} of {counts['images']} {items}; " + ", ".join(
        f"{counts[name]} {name}" for name in ISSUES))
    if fixed.any():
        print(f"clean: the source's val/test images are a fixed evaluation set: "
              f"{counts['fixed_eval_kept']} of {counts['fixed_eval_images']} kept (only "
              f"unreadable ones or a person's decisions drop them); "
              f"{counts['train_copies_of_eval_dropped']} train images removed for copying "
              f"a val/test image")
    for rel, err in zip(rel_paths, errors):
        if err:
            print(f"  unreadable: {rel}: {err}")
    for note in notes:
        print(f"  note: {note}")
