"""split stage: assign kept images to train/val/test, then audit the split for leakage.

Rows of one duplicate cluster (``cluster_id``) always share a split, in every method.
The result depends only on the data and ``base.seed``, never on row order. The audit
(every method, predefined splits included) looks for clusters and groups shared with
train, temporal order and embargo violations and untrained classes; ``split.on_leakage``
fails the stage (default), warns, or drops the train-side rows. Writes
``data/split/manifest.csv``, ``data/split/leakage.csv`` (every leaking pair) and
``metrics/split.json`` (counts per split and class, leaks by kind).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pipeline import paths
from pipeline.config import BaseConfig, PipelineError, SplitConfig, load_sections, run_stage
from pipeline.leakage import KINDS, Leak, audit, train_rows_to_drop
from pipeline.manifest import read_manifest, write_manifest
from pipeline.splitting import (
    SPLITS,
    SplitError,
    carve_val,
    check_classes,
    merge_keys,
    split_temporal,
    split_units,
)

DAY = 86400.0  # seconds


def _seconds(values: pd.Series, name: str) -> pd.Series:
    """Dates or times as seconds since 1970 (UTC), or an error naming the bad values."""
    times = pd.to_datetime(values, errors="coerce", utc=True)
    if times.isna().any():
        bad = values[times.isna()].head(3).tolist()
        raise PipelineError(f"{name} has values that are not dates or times, e.g. {bad}")
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


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
        val_share = cfg.fractions.val / (cfg.fractions.train + cfg.fractions.val)
        result = carve_val(labels, clusters, list(df["split"]), val_fraction=val_share,
                           seed=seed)
    return pd.Series(list(result), index=df.index)


def audit_split(df: pd.DataFrame, cfg: SplitConfig) -> list[Leak]:
    """The leakage audit of a split manifest (rows with a split)."""
    groups = list(df[cfg.group_column]) if cfg.group_column in df else None
    times = (list(_seconds(df[cfg.time_column], cfg.time_column))
             if cfg.method == "temporal" else None)
    return audit(list(df["split"]), labels=list(df["label"]), clusters=list(df["cluster_id"]),
                 groups=groups, times=times, embargo=cfg.embargo_days * DAY)


def _describe(df: pd.DataFrame, leaks: list[Leak], limit: int = 10) -> str:
    lines = []
    for leak in leaks[:limit]:
        row = df.iloc[leak.row]
        other = f" ~ train {df.iloc[leak.train_row]['path']}" if leak.train_row >= 0 else ""
        lines.append(f"  {leak.kind}: {row['split']} {row['path']}{other} ({leak.detail})")
    more = f"\n  ... and {len(leaks) - limit} more" if len(leaks) > limit else ""
    return "\n".join(lines) + more


def run(base: BaseConfig, cfg: SplitConfig, clean: Path, output: Path, metrics: Path,
        leakage_out: Path) -> pd.DataFrame:
    """Split the kept rows, audit the split for leakage, write manifest, pairs and counts."""
    df = read_manifest(clean)
    kept = df[df["keep"]]
    if kept.empty:
        raise PipelineError(f"{clean} has no kept images to split")
    try:
        splits = assign(kept, cfg, base.seed)
        out = kept.assign(split=splits)
        embargoed = int((out["split"] == "").sum())
        out = out[out["split"] != ""].sort_values("image_id", kind="stable")
        out = out.reset_index(drop=True)
        warnings = check_classes(list(out["label"]), list(out["split"]))
    except SplitError as exc:
        raise PipelineError(f"split.method = {cfg.method}: {exc}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)

    leaks = audit_split(out, cfg)
    found = {kind: sum(leak.kind == kind for leak in leaks) for kind in KINDS}
    pairs = pd.DataFrame([{"kind": leak.kind, "split": out.at[leak.row, "split"],
                           "image_id": out.at[leak.row, "image_id"],
                           "path": out.at[leak.row, "path"],
                           "train_image_id": out.at[leak.train_row, "image_id"]
                           if leak.train_row >= 0 else "",
                           "train_path": out.at[leak.train_row, "path"]
                           if leak.train_row >= 0 else "",
                           "detail": leak.detail} for leak in leaks],
                         columns=["kind", "split", "image_id", "path", "train_image_id",
                                  "train_path", "detail"])
    leakage_out.parent.mkdir(parents=True, exist_ok=True)
    pairs.to_csv(leakage_out, index=False, lineterminator="\n")
    dropped = 0
    if leaks and cfg.on_leakage == "fail":
        raise PipelineError(f"the split leaks ({len(leaks)} rows; all pairs in "
                            f"{leakage_out}):\n{_describe(out, leaks)}\nset split.on_leakage "
                            f"to warn or drop_from_train to go on")
    if leaks and cfg.on_leakage == "warn":
        print(f"warning: the split leaks:\n{_describe(out, leaks)}", file=sys.stderr)
    if leaks and cfg.on_leakage == "drop_from_train":
        groups = list(out[cfg.group_column]) if cfg.group_column in out else None
        times = (list(_seconds(out[cfg.time_column], cfg.time_column))
                 if cfg.method == "temporal" else None)
        drop = train_rows_to_drop(list(out["split"]), leaks, clusters=list(out["cluster_id"]),
                                  groups=groups, times=times, embargo=cfg.embargo_days * DAY)
        dropped = int(drop.sum())
        out = out[~drop].reset_index(drop=True)
        remaining = audit_split(out, cfg)
        if remaining:
            raise PipelineError(f"dropping {dropped} train rows left leaks that only a new "
                                f"split can fix:\n{_describe(out, remaining)}")
        print(f"dropped {dropped} train rows that leaked into val/test", file=sys.stderr)

    write_manifest(out, output)
    counts: dict[str, int] = {f"{s}_images": int((out["split"] == s).sum()) for s in SPLITS}
    counts |= {f"leak_{kind}": n for kind, n in found.items()}
    counts |= {"dropped_from_train": dropped, "embargoed": embargoed}
    for (label, split), n in out.groupby(["label", "split"]).size().items():
        counts[f"{split}_class_{label}"] = int(n)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(counts, indent=2) + "\n")
    print("split: " + ", ".join(f"{s} {counts[f'{s}_images']}" for s in SPLITS) +
          f"; leaks found: {sum(found.values())}")
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    base, split = load_sections("base", "split")
    run(base, split, paths.CLEAN, paths.SPLIT, paths.METRICS_DIR / "split.json",
        paths.LEAKAGE)


if __name__ == "__main__":
    run_stage("split", main)
