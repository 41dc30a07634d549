"""clean stage: mark unreadable images, exact and near duplicates, conflicting labels,
likely label errors and outliers; write data/clean/manifest.csv.

Rows are never removed: each gets ``keep`` (by the policies in params), ``issues``
(;-joined), ``cluster_id`` (exact or near-duplicate cluster), ``label_quality``
(cleanlab, from out-of-fold probabilities of a linear probe on the embed stage's
features), ``suggested_label`` (for flagged label issues) and ``error`` (why an image
is unreadable). Source images are only read.

When the source recorded a split (train/ val/ test/ folders or a split column), its
val/test rows are a fixed evaluation set: the policies only flag them (an unreadable
image or a person's ``drop`` decision still removes one), and in a duplicate cluster
that straddles train and val/test the train members are the ones removed.

Near copies: with ``clean.near_duplicate_threshold: auto`` the rule is calibrated on
synthetic copies of the user's own images (the embed stage's calibration copies,
pipeline.dataquality.calibrate): one threshold per signal (embedding, thumbnail, perceptual hash,
aligned views), a pair a copy when any signal reaches its own; the estimated recall and
false-match rate go to metrics/all/clean.json, and the rule to
data/clean/calibration.json, which the
split stage's leakage audit reuses. An explicit number keeps the single cosine threshold
on the embeddings (written to the same file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.contracts.embedfiles import read_aligned
from pipeline.contracts.labelfiles import for_spreadsheet
from pipeline.contracts.manifest import (
    join_issues,
    read_manifest,
    write_manifest,
)
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.core.files import write_csv, write_metrics, write_text
from pipeline.core.seeding import pin_cpu
from pipeline.dataquality.cleaning import (
    ACTIONS,
    aim_at_train_side,
    apply_decisions,
    apply_policies,
    clean_counts,
    data_notes,
    detect,
    final_checks,
    fixed_rows,
    near_rule,
    print_summary,
    read_decisions,
    review_table,
    vote_searches,
)
from pipeline.modality.itemkinds import inline_texts
from pipeline.params.base import BaseConfig
from pipeline.params.clean import CleanConfig
from pipeline.params.data import DataConfig
from pipeline.reporting.review_page import review_page

# what metrics/clean.json keeps for dvc exp show (images kept); every number goes
# to metrics/all/clean.json (pipeline.core.files.write_metrics)
HEADLINE = ("kept",)


def run(data: DataConfig, cfg: CleanConfig, prepared: Path, embed_dir: Path, output: Path,
        metrics: Path, *, decisions: Path = paths.DECISIONS, review_out: Path | None = None,
        review_html: Path | None = None, calibration: Path | None = None
        ) -> pd.DataFrame:
    """Find problems from the embed stage's pass, apply the policies, write the results."""
    # the review files and the near-copy rule go beside the manifest (paths.py's names)
    review_out = review_out or output.parent / paths.REVIEW.name
    review_html = review_html or output.parent / paths.REVIEW_PAGE.name
    calibration = calibration or output.parent / paths.CALIBRATION.name
    df = read_manifest(prepared)
    if df.empty:
        raise PipelineError(f"{prepared} lists no images: nothing to clean")
    ids = list(df["image_id"])
    embeddings, embed_meta = read_aligned(embed_dir, ids, source=prepared)
    # the embed stage decoded every image once: its pixel hashes and reasons
    valid = np.array(embed_meta.valid, dtype=bool)
    rule, near_metrics = near_rule(cfg, embed_dir, embed_meta.pixel_hash, valid, calibration)
    searches = vote_searches(cfg, embed_dir, ids, embeddings, rule)
    findings = detect(df, cfg, embeddings, embed_meta.pixel_hash, valid, searches, rule,
                      lengths=embed_meta.lengths or None, scripts=embed_meta.scripts or None)
    fixed = fixed_rows(df)
    train_copies = aim_at_train_side(findings, fixed)
    keep, issues = apply_policies(findings, cfg, fixed)
    verdicts = read_decisions(decisions, set(ids))
    labels = list(df["label"])
    apply_decisions(verdicts, ids, keep, labels, ~valid)

    mistaken = findings.found["label_issue"]
    out = df.copy()
    out["label"] = labels
    out["keep"] = keep
    out["issues"] = [join_issues(x) for x in issues]
    out["cluster_id"] = [c or "" for c in findings.clusters]
    out["label_quality"] = [f"{q:.4f}" if np.isfinite(q) else "" for q in findings.quality]
    out["suggested_label"] = [g if m else "" for g, m in zip(findings.suggested, mistaken)]
    out["error"] = embed_meta.error
    out["decision"] = [verdicts.get(i, "") for i in ids]
    write_manifest(out, output)
    review = review_table(df, out, findings)
    review_out.parent.mkdir(parents=True, exist_ok=True)
    # a list people open in a spreadsheet: no label or path runs there as a formula
    write_csv(for_spreadsheet(review, ["path", "label", "suggested_label"]), review_out,
              float_format="%.6g")
    notes = data_notes(data, list(df["path"]), embed_meta.notes)
    write_text(review_html, review_page(review, Path(data.root), actions=ACTIONS, notes=notes,
                                        modality=embed_meta.modality, texts=inline_texts(df)))

    counts = clean_counts(findings, keep, verdicts, embed_meta, notes, fixed, train_copies)
    counts |= near_metrics
    metrics.parent.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics, counts, HEADLINE)
    print_summary(counts, fixed, list(out["path"]), embed_meta.error, notes)
    final_checks(out, counts, cfg, review_html)
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    base, data, clean = load_sections("base", "data", "clean")
    assert isinstance(base, BaseConfig)
    pin_cpu(deterministic=base.deterministic)  # BLAS threads: the probe's sums
    run(data, clean, paths.PREPARED, paths.EMBED_DIR, paths.CLEAN,
        paths.METRICS_DIR / "clean.json")


if __name__ == "__main__":
    run_stage("clean", main)
