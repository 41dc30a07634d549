"""split stage: assign kept images to train/val/test; write data/split/manifest.csv.

Rows of one duplicate cluster (``cluster_id``) always share a split, in every method.
The result depends only on the data and ``base.seed``, never on row order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pipeline import paths
from pipeline.config import BaseConfig, PipelineError, SplitConfig, load_sections, run_stage
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
        times = pd.to_datetime(df[cfg.time_column], errors="coerce", utc=True)
        if times.isna().any():
            bad = df.loc[times.isna(), cfg.time_column].head(3).tolist()
            raise PipelineError(f"column {cfg.time_column!r} has values that are not dates "
                                f"or times, e.g. {bad}")
        seconds = (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
        result = split_temporal(list(seconds), clusters, fractions=fractions)
    else:  # predefined
        if "split" not in df or (df["split"] == "").all():
            raise PipelineError("split.method = predefined, but the source recorded no split "
                                "(no train/ val/ test/ folders, no split column)")
        val_share = cfg.fractions.val / (cfg.fractions.train + cfg.fractions.val)
        result = carve_val(labels, clusters, list(df["split"]), val_fraction=val_share,
                           seed=seed)
    return pd.Series(list(result), index=df.index)


def run(base: BaseConfig, cfg: SplitConfig, clean: Path, output: Path,
        metrics: Path) -> pd.DataFrame:
    """Split the kept rows and write the manifest and per-split counts."""
    df = read_manifest(clean)
    kept = df[df["keep"]]
    if kept.empty:
        raise PipelineError(f"{clean} has no kept images to split")
    try:
        splits = assign(kept, cfg, base.seed)
        warnings = check_classes(list(kept["label"]), list(splits))
    except SplitError as exc:
        raise PipelineError(f"split.method = {cfg.method}: {exc}") from None
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = kept.assign(split=splits)
    write_manifest(out, output)
    counts: dict[str, int] = {f"{s}_images": int((out["split"] == s).sum()) for s in SPLITS}
    for (label, split), n in out.groupby(["label", "split"]).size().items():
        counts[f"{split}_class_{label}"] = int(n)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(counts, indent=2) + "\n")
    print("split: " + ", ".join(f"{s} {counts[f'{s}_images']}" for s in SPLITS))
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    base, split = load_sections("base", "split")
    run(base, split, paths.CLEAN, paths.SPLIT, paths.METRICS_DIR / "split.json")


if __name__ == "__main__":
    run_stage("split", main)
