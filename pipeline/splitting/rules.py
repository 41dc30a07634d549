"""The split stage's rules, apart from its file writing: the assignment by ``split.method``
(resolved from the data for ``auto``), the fold column, the leakage audit of a finished
split with clean's near-copy rule, what ``split.on_leakage`` does about leaks, the counts
and the checks that fail a split before train would.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.contracts import calibfiles
from pipeline.contracts.embedfiles import read_signals
from pipeline.contracts.manifest import check_two_classes, read_manifest
from pipeline.core.errors import PipelineError
from pipeline.dataquality.calibrate import Calibration
from pipeline.modality.image.signals import Signal, as_signals
from pipeline.params.split import SplitConfig
from pipeline.splitting.assign import (
    SPLITS,
    SplitError,
    assign_folds,
    carve_val,
    check_classes,
    merge_keys,
    parse_times,
    predefined_layout,
    split_temporal,
    split_units,
)
from pipeline.splitting.leakage import Leak, audit, train_rows_to_drop

DAY = 86400.0  # seconds




def _seconds(values: pd.Series, name: str) -> pd.Series:
    """Dates or times as seconds since 1970 (UTC; see splitting.parse_times), or an error
    naming the bad values."""
    seconds = parse_times(list(values))
    if np.isnan(seconds).any():
        bad = values[np.isnan(seconds)].head(3).tolist()
        raise PipelineError(f"{name} has values that are not dates or times, e.g. {bad} "
                            f"(use ISO-8601: 2024-01-31, 2024-01-31T12:00:00+05:00)")
    return pd.Series(seconds, index=values.index)


def assign(df: pd.DataFrame, cfg: SplitConfig, seed: int) -> pd.Series:
    """The split of every row of a kept-rows manifest, by ``cfg.method``."""
    df = df.sort_values("image_id", kind="stable")
    clusters = [c or i for c, i in zip(df["cluster_id"], df["image_id"])]
    labels = list(df["label"])
    fractions = (cfg.fractions.train, cfg.fractions.val, cfg.fractions.test)
    method = cfg.method
    for column, needed in ((cfg.group_column, "group"), (cfg.time_column, "temporal")):
        if method == needed and column not in df:
            raise PipelineError(f"split.method = {method} needs the column {column!r} "
                                f"(split.{needed if needed == 'group' else 'time'}_column), "
                                f"which the manifest lacks")
    if method in ("random", "stratified"):
        result = split_units(labels, clusters, fractions=fractions, seed=seed,
                             stratify=method == "stratified")
    elif method == "group":
        keys = merge_keys(clusters, list(df[cfg.group_column]))
        result = split_units(labels, keys, fractions=fractions, seed=seed, stratify=True)
    elif method == "temporal":
        seconds = _seconds(df[cfg.time_column], cfg.time_column)
        cutoffs = [float(_seconds(pd.Series(list(cfg.cutoffs)), "split.cutoffs").iloc[i])
                   for i in range(len(cfg.cutoffs))]
        result = split_temporal(list(seconds), clusters, fractions=fractions, cutoffs=cutoffs,
                                embargo=cfg.embargo_days * DAY)
    else:  # predefined
        if "split" not in df or (df["split"] == "").all():
            raise PipelineError("split.method = predefined, but the source recorded no split "
                                "(no train/ val/ test/ folders, no split column)")
        given, decision = predefined_layout(list(df["split"]))
        val_share = cfg.fractions.val / (cfg.fractions.train + cfg.fractions.val)
        if not (given == "val").any():  # carve_val moves this share of train/ to val
            decision += f" (split.fractions.val / (train + val) = {val_share:.1%} of train/)"
        print(f"split: {decision}")
        result = carve_val(labels, clusters, list(given), val_fraction=val_share, seed=seed)
    return pd.Series(list(result), index=df.index)


def fold_column(out: pd.DataFrame, cfg: SplitConfig, seed: int) -> pd.Series:
    """split.folds: the cross-validation fold of every train and val row (test rows -1),
    stratified, a duplicate cluster (and with method group, a group) inside one fold."""
    pool = out["split"].isin(["train", "val"]).to_numpy()
    df = out[pool]
    keys = [c or i for c, i in zip(df["cluster_id"], df["image_id"])]
    if cfg.method == "group":
        keys = merge_keys(keys, list(df[cfg.group_column]))
    folds = np.full(len(out), -1, dtype=np.int64)
    try:
        folds[pool] = assign_folds(list(df["label"]), keys, k=len(cfg.folds), seed=seed)
    except SplitError as exc:
        raise PipelineError(f"split.folds = {list(cfg.folds)}: {exc}") from None
    return pd.Series(folds, index=out.index)


def _groups_and_times(df: pd.DataFrame, cfg: SplitConfig
                      ) -> tuple[list[str] | None, list[float] | None]:
    """The rows' groups (when the manifest has the group column) and, for a temporal
    split, their times in seconds: what the audit and the drop rule check."""
    groups = list(df[cfg.group_column]) if cfg.group_column in df else None
    times = (list(_seconds(df[cfg.time_column], cfg.time_column))
             if cfg.method == "temporal" else None)
    return groups, times


@dataclass(frozen=True)
class CopyRule:
    """split.near_duplicate_threshold = auto: clean's calibrated rule and the rows' signals."""

    calibration: Calibration
    signals: list[Signal]  # per calibration signal, row-aligned

    def subset(self, keep: np.ndarray) -> CopyRule:
        """The same rule over the rows ``keep`` ((N,) bool)."""
        return CopyRule(self.calibration, [x[keep] for x in self.signals])


def audit_split(df: pd.DataFrame, cfg: SplitConfig, *, embeddings: np.ndarray | None = None,
                hashes: list[str | None] | None = None, rule: CopyRule | None = None
                ) -> list[Leak]:
    """The leakage audit of a split manifest (rows with a split); copies are looked for
    when the rows' embeddings and pixel hashes are given (near copies by ``rule`` when
    given, else by split.near_duplicate_threshold)."""
    groups, times = _groups_and_times(df, cfg)
    threshold = cfg.near_duplicate_threshold
    return audit(list(df["split"]), labels=list(df["label"]), clusters=list(df["cluster_id"]),
                 groups=groups, times=times, embargo=cfg.embargo_days * DAY, hashes=hashes,
                 embeddings=embeddings,
                 near_threshold=None if threshold == "auto" else float(threshold),
                 signals=rule.signals if rule else None,
                 calibration=rule.calibration if rule else None)


def leakage_table(df: pd.DataFrame, leaks: list[Leak]) -> pd.DataFrame:
    """One row per leak: the val/test image, the train image it leaks with, similarity."""
    columns = ["kind", "split", "image_id", "path", "label", "train_image_id", "train_path",
               "train_label", "similarity", "detail"]
    rows = []
    for leak in leaks:
        row, other = df.iloc[leak.row], df.iloc[leak.train_row] if leak.train_row >= 0 else None
        rows.append({"kind": leak.kind, "split": row["split"], "image_id": row["image_id"],
                     "path": row["path"], "label": row["label"],
                     "train_image_id": "" if other is None else other["image_id"],
                     "train_path": "" if other is None else other["path"],
                     "train_label": "" if other is None else other["label"],
                     "similarity": leak.similarity, "detail": leak.detail})
    return pd.DataFrame(rows, columns=columns)


def _describe(df: pd.DataFrame, leaks: list[Leak], limit: int = 10) -> str:
    lines = []
    for leak in leaks[:limit]:
        row = df.iloc[leak.row]
        other = f" ~ train {df.iloc[leak.train_row]['path']}" if leak.train_row >= 0 else ""
        lines.append(f"  {leak.kind}: {row['split']} {row['path']}{other} ({leak.detail})")
    more = f"\n  ... and {len(leaks) - limit} more" if len(leaks) > limit else ""
    return "\n".join(lines) + more


@dataclass
class LeakPolicy:
    """What split.on_leakage acts on: the split, its leaks and their evidence."""

    cfg: SplitConfig
    out: pd.DataFrame
    leaks: list[Leak]
    drop: np.ndarray  # (N,) bool: the train rows drop_from_train removes
    embeddings: np.ndarray
    hashes: list[str | None]
    where: str  # the files that show every pair
    rule: CopyRule | None = None  # the calibrated near-copy rule (auto)


def fail_on_leaks(p: LeakPolicy) -> pd.DataFrame:
    """split.on_leakage = fail: stop, naming the leaking pairs."""
    raise PipelineError(f"the split leaks ({len(p.leaks)} rows; all pairs in {p.where}):\n"
                        f"{_describe(p.out, p.leaks)}\nset split.on_leakage to warn or "
                        f"drop_from_train to go on")


def warn_on_leaks(p: LeakPolicy) -> pd.DataFrame:
    """split.on_leakage = warn: keep the split as it is."""
    print(f"warning: the split leaks:\n{_describe(p.out, p.leaks)}", file=sys.stderr)
    return p.out


def drop_train_side(p: LeakPolicy) -> pd.DataFrame:
    """split.on_leakage = drop_from_train: remove the train side of every pair, then
    audit again (a leak that dropping cannot fix is an error)."""
    out = p.out[~p.drop].reset_index(drop=True)
    hashes = [h for h, d in zip(p.hashes, p.drop) if not d]
    remaining = audit_split(out, p.cfg, embeddings=p.embeddings[~p.drop], hashes=hashes,
                            rule=p.rule.subset(~p.drop) if p.rule else None)
    dropped = int(p.drop.sum())
    if remaining:
        raise PipelineError(f"dropping {dropped} train rows left leaks that only a new "
                            f"split can fix:\n{_describe(out, remaining)}")
    print(f"dropped {dropped} train rows that leaked into val/test", file=sys.stderr)
    return out


ON_LEAKAGE = {"fail": fail_on_leaks, "warn": warn_on_leaks, "drop_from_train": drop_train_side}


def rows_to_drop(out: pd.DataFrame, leaks: list[Leak], cfg: SplitConfig) -> np.ndarray:
    """(N,) bool: the train rows drop_from_train would remove (none under other policies)."""
    if not leaks or cfg.leakage_policy != "drop_from_train":
        return np.zeros(len(out), dtype=bool)
    groups, times = _groups_and_times(out, cfg)
    return train_rows_to_drop(list(out["split"]), leaks, clusters=list(out["cluster_id"]),
                              groups=groups, times=times, embargo=cfg.embargo_days * DAY)


def page_summary(out: pd.DataFrame, cfg: SplitConfig, found: dict[str, int], leaks: bool,
                 dropped: int) -> list[str]:
    """The lines at the top of the leakage page."""
    outcome = {"fail": "the stage failed; set split.on_leakage to warn or drop_from_train "
                       "to go on",
               "warn": "the split was kept as it is (split.on_leakage = warn)",
               "drop_from_train": f"{dropped} train images were dropped: the train side of "
                                  f"every pair"}[cfg.leakage_policy]
    threshold = cfg.near_duplicate_threshold
    return [f"split.method = {cfg.method}, split.near_duplicate_threshold = "
            f"{threshold if threshold == 'auto' else f'{threshold:g}'}",
            "images before any drop: " + ", ".join(
                f"{s} {int((out['split'] == s).sum())}" for s in SPLITS),
            "leaks by kind: " + ", ".join(f"{kind} {n}" for kind, n in found.items()),
            *([outcome] if leaks else [])]


def check_not_empty(out: pd.DataFrame, cfg: SplitConfig) -> None:
    """Raise SplitError when val or test got no image: train needs val, evaluate needs
    test, and this stage is the place to say so, before any training."""
    counts = {s: int((out["split"] == s).sum()) for s in SPLITS}
    empty = [s for s in ("val", "test") if counts[s] == 0]
    if not empty:
        return
    got = ", ".join(f"{s} {n}" for s, n in counts.items())
    if cfg.method != "predefined":
        todo = (f"give split.fractions.{' and split.fractions.'.join(empty)} > 0 (each class "
                f"needs a few images per split)")
    elif "val" in empty:
        todo = ("give split.fractions.val > 0 (and train/ a few images per class) so that "
                "val is carved from train/")
    else:
        todo = "add readable images to test/ (or val/)"
    raise SplitError(f"the {' and '.join(empty)} split is empty ({got}); {todo}")


def left_out_of_fixed_sets(df: pd.DataFrame) -> int:
    """How many of the source's val/test rows the clean manifest does not keep."""
    if "split" not in df:
        return 0
    return int((df["split"].isin(["val", "test"]) & ~df["keep"].astype(bool)).sum())


def resolve_method(cfg: SplitConfig, df: pd.DataFrame) -> SplitConfig:
    """``split.method: auto``: predefined when the source recorded a split (train/ val/
    test/ folders or a split column), stratified otherwise; printed, so a run says what
    it used. An explicit method is returned as it is."""
    if cfg.method != "auto":
        return cfg
    recorded = "split" in df and bool((df["split"].fillna("") != "").any())
    method: Literal["predefined", "stratified"] = "predefined" if recorded else "stratified"
    print(f"split: split.method auto -> {method} (the source recorded "
          f"{'a split' if recorded else 'no split'})")
    return dataclasses.replace(cfg, method=method)


def split_rows(clean: Path, cfg: SplitConfig, seed: int) -> tuple[pd.DataFrame, int]:
    """The kept rows of the clean manifest with their split (rows in an embargo gap left
    out), and how many were left out."""
    df = read_manifest(clean)
    kept = df[df["keep"]]
    if kept.empty:
        raise PipelineError(f"{clean} has no kept images to split")
    check_two_classes(kept["label"], f"{clean}, kept rows")
    try:
        out = kept.assign(split=assign(kept, cfg, seed))
        embargoed = int((out["split"] == "").sum())
        out = out[out["split"] != ""].sort_values("image_id", kind="stable")
        out = out.reset_index(drop=True)
        warnings = check_classes(list(out["label"]), list(out["split"]))
        check_not_empty(out, cfg)
    except SplitError as exc:
        lost = left_out_of_fixed_sets(df) if cfg.method == "predefined" else 0
        note = (f" (clean left out {lost} of the source's val/test images, unreadable or "
                f"dropped by a decision: see data/clean/review.html)" if lost else "")
        raise PipelineError(f"split.method = {cfg.method}: {exc}{note}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return out, embargoed


def split_counts(out: pd.DataFrame, found: dict[str, int], dropped: int, embargoed: int
                 ) -> dict[str, int]:
    """metrics/all/split.json: images per split, leaks (all kinds, then by kind), drops;
    metrics/split.json keeps the leaks. The per-class counts are in the report (from the
    split manifest)."""
    counts: dict[str, int] = {f"{s}_images": int((out["split"] == s).sum()) for s in SPLITS}
    counts["leaks"] = sum(found.values())
    counts |= {f"leak_{kind}": n for kind, n in found.items()}
    counts |= {"dropped_from_train": dropped, "embargoed": embargoed}
    return counts


def copy_rule(cfg: SplitConfig, calibration: Path, embed_dir: Path, ids: list[str]
              ) -> CopyRule | None:
    """split.near_duplicate_threshold = auto: the clean stage's rule over these rows."""
    if cfg.near_duplicate_threshold != "auto":
        return None
    cal = calibfiles.read(calibration)
    print(f"split: leakage audit near copies by clean's rule: {cal.summary()}")
    return CopyRule(cal, as_signals(read_signals(embed_dir, ids), cal.signals))
