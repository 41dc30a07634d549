"""split stage: assign kept images to train/val/test, then audit the split for leakage.

Rows of one duplicate cluster (``cluster_id``) always share a split, in every method.
The result depends only on the data and ``base.seed``, never on row order. The audit
(every method, predefined splits included) looks for exact copies (embed's pixel hashes)
and near copies (embed's features, ``split.near_duplicate_threshold``; ``auto``: the
clean stage's calibrated rule, data/clean/calibration.json) of val/test images among
the train images, clusters and groups shared with train, temporal order
and embargo violations and untrained classes; ``split.on_leakage`` fails the stage,
warns, or drops the train-side rows (``auto``, the default: drop them for a predefined
split, whose val/test set is never changed, fail otherwise). A predefined split's
layout is decided and printed here (``train/ val/``: val/ becomes test), and a split
without val or test images fails here, never later in train or evaluate. Writes
``data/split/manifest.csv``, ``data/split/leakage.csv`` (every leaking pair),
``data/split/leakage.html`` (the pairs side by side as thumbnails, opens offline) and
``metrics/all/split.json`` (counts per split, leaks in all and by kind, drops; the
per-class counts are in the report) and ``metrics/split.json`` (the leaks). With
``split.folds`` the manifest gets a ``fold`` column for k-fold cross-validation of
train + val (the ``fold@<k>`` stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.contracts.embedfiles import read_meta, read_rows
from pipeline.contracts.manifest import read_manifest, write_manifest
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import run_stage
from pipeline.core.files import write_csv, write_metrics, write_text
from pipeline.core.seeding import pin_cpu
from pipeline.modality.itemkinds import inline_texts
from pipeline.params.base import BaseConfig
from pipeline.params.data import DataConfig
from pipeline.params.split import SplitConfig
from pipeline.reporting.leakage_page import leakage_page
from pipeline.splitting.assign import SPLITS
from pipeline.splitting.leakage import KINDS
from pipeline.splitting.rules import (
    ON_LEAKAGE,
    LeakPolicy,
    audit_split,
    copy_rule,
    fold_column,
    leakage_table,
    page_summary,
    resolve_method,
    rows_to_drop,
    split_counts,
    split_rows,
)

# what metrics/split.json keeps for dvc exp show (leaking pairs found, all kinds); every
# number goes to metrics/all/split.json (pipeline.core.files.write_metrics)
HEADLINE = ("leaks",)


def run(base: BaseConfig, data: DataConfig, cfg: SplitConfig, clean: Path, embed_dir: Path,
        output: Path, metrics: Path, *, leakage_csv: Path | None = None,
        leakage_html: Path | None = None, calibration: Path | None = None
        ) -> pd.DataFrame:
    """Split the kept rows, audit the split for leakage, write manifest, pairs and counts."""
    # the leakage files go beside the manifest; clean's rule lies beside its manifest
    leakage_csv = leakage_csv or output.parent / paths.LEAKAGE.name
    leakage_html = leakage_html or output.parent / paths.LEAKAGE_PAGE.name
    calibration = calibration or clean.parent / paths.CALIBRATION.name
    cfg = resolve_method(cfg, read_manifest(clean))
    out, embargoed = split_rows(clean, cfg, base.seed)
    embeddings, hashes = read_rows(embed_dir, list(out["image_id"]))
    rule = copy_rule(cfg, calibration, embed_dir, list(out["image_id"]))
    leaks = audit_split(out, cfg, embeddings=embeddings, hashes=hashes, rule=rule)
    found = {kind: sum(leak.kind == kind for leak in leaks) for kind in KINDS}
    pairs = leakage_table(out, leaks)
    leakage_csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(pairs, leakage_csv, float_format="%.4f")
    drop = rows_to_drop(out, leaks, cfg)
    dropped = int(drop.sum())
    summary = page_summary(out, cfg, found, bool(leaks), dropped)
    write_text(leakage_html, leakage_page(pairs, Path(data.root), summary=summary,
                                          modality=read_meta(embed_dir).modality,
                                          texts=inline_texts(out)))
    if leaks:
        out = ON_LEAKAGE[cfg.leakage_policy](LeakPolicy(
            cfg, out, leaks, drop, embeddings, hashes,
            where=f"{leakage_csv}, side by side in {leakage_html}", rule=rule))
    if cfg.folds:  # no column without folds: the manifest stays as it was
        out = out.assign(fold=fold_column(out, cfg, base.seed))
        print("split: folds " + ", ".join(f"{k} {int((out['fold'] == k).sum())}"
                                          for k in cfg.folds) + " (of train + val)")
    write_manifest(out, output)
    counts: dict[str, Any] = dict(split_counts(out, found, dropped, embargoed))
    # clean.json holds the calibrated rule's numbers; once is enough for dvc exp show
    counts["audit_rule_calibrated"] = int(rule is not None)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics, counts, HEADLINE)
    print("split: " + ", ".join(f"{s} {counts[f'{s}_images']}" for s in SPLITS) +
          f"; leaks found: {counts['leaks']}")
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    base, data, split = load_sections("base", "data", "split")
    pin_cpu(deterministic=base.deterministic)  # BLAS threads: the audit's similarities
    run(base, data, split, paths.CLEAN, paths.EMBED_DIR, paths.SPLIT,
        paths.METRICS_DIR / "split.json")


if __name__ == "__main__":
    run_stage("split", main)
