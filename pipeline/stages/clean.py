"""clean stage: mark unreadable images, exact and near duplicates, conflicting labels,
likely label errors and outliers; write data/clean/manifest.csv.

Rows are never removed: each gets ``keep`` (by the policies in params), ``issues``
(;-joined), ``cluster_id`` (exact or near-duplicate cluster), ``label_quality``
(cleanlab, from out-of-fold probabilities of a linear probe on the embed stage's
features), ``suggested_label`` (for flagged label issues) and ``error`` (why an image
is unreadable). Source images are only read.
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.config import load_sections
from pipeline.errors import PipelineError, run_stage
from pipeline.manifest import read_manifest, resolve, write_manifest
from pipeline.pages import thumbnail_tag
from pipeline.params.clean import CleanConfig
from pipeline.params.data import DataConfig
from pipeline.quality import (
    conflicting_clusters,
    exact_duplicate_clusters,
    label_issues,
    near_duplicate_clusters,
    neighbours,
    outlier_scores,
)

ACTIONS = "keep, drop or relabel:<label>"
ISSUE_ORDER = {name: i for i, name in enumerate(
    ("unreadable", "exact_duplicate", "near_duplicate", "conflicting_labels", "label_issue",
     "outlier"))}


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
    return dict(zip(table["image_id"], table["action"]))


def review_page(review: pd.DataFrame, root: Path) -> str:
    """An offline HTML page of thumbnails grouped by issue, from the review list."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clean review</title>"
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;"
             "width:150px;font-size:11px;vertical-align:top}</style></head><body>",
             "<h1>Images to review</h1><p>Record verdicts in data/review/decisions.csv "
             f"(image_id,action: {ACTIONS}); the next dvc repro applies them.</p>"]
    for issue, rows in review.groupby("issue", sort=False):
        parts.append(f"<h2>{html.escape(str(issue))} ({len(rows)})</h2>")
        for row in rows.head(200).itertuples():
            picture = thumbnail_tag(resolve(root, row.path), row.image_id)
            suggestion = f" → {html.escape(row.suggested_label)}" if row.suggested_label else ""
            parts.append(f"<figure>{picture}<figcaption>{html.escape(row.image_id)}<br>"
                         f"{html.escape(row.path)}<br>label {html.escape(row.label)}"
                         f"{suggestion}, score {row.score:.3f}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def run(data: DataConfig, cfg: CleanConfig, prepared: Path, embed_dir: Path, output: Path,
        metrics: Path, *, decisions: Path = paths.DECISIONS, review_out: Path = paths.REVIEW,
        review_html: Path = paths.REVIEW_PAGE) -> pd.DataFrame:
    """Find problems from the embed stage's pass, apply the policies, write the results."""
    df = read_manifest(prepared)
    root = Path(data.root)
    ids = list(df["image_id"])
    embeddings = np.load(embed_dir / "embeddings.npy")
    embed_meta = json.loads((embed_dir / "meta.json").read_text())
    if embed_meta["ids"] != ids:
        raise PipelineError(f"{embed_dir} does not match {prepared}: rerun dvc repro")
    # the embed stage decoded every image once: its pixel hashes and reasons
    hashes: list[str | None] = embed_meta["pixel_hash"]
    errors: list[str] = embed_meta["error"]
    valid = np.array(embed_meta["valid"], dtype=bool)
    unreadable = ~valid

    exact = exact_duplicate_clusters(hashes, order=ids)
    index, sims = neighbours(embeddings, k=cfg.neighbours, exact_max=cfg.exact_search_max,
                             probes=cfg.search_probes)
    near = near_duplicate_clusters(index, sims, threshold=cfg.near_duplicate_threshold,
                                   order=ids, valid=valid)
    clusters = np.array([n if n is not None else e for n, e in zip(near, exact)], dtype=object)
    exact_dup = np.array([e is not None and e != i for e, i in zip(exact, ids)])
    near_dup = np.array([c is not None and c != i for c, i in zip(clusters, ids)]) & ~exact_dup
    conflicting = conflicting_clusters(list(clusters), list(df["label"]))

    quality = np.full(len(ids), np.nan)
    suggested = np.full(len(ids), "", dtype=object)
    mistaken = np.zeros(len(ids), dtype=bool)
    rows = np.flatnonzero(valid)
    mask, scores, guesses, note = label_issues(
        embeddings[rows], list(df["label"].iloc[rows]), folds=cfg.label_folds,
        seed=0, filter_by=cfg.label_method, probe=cfg.probe_for(len(rows)), dims=cfg.probe_dims)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    mistaken[rows], quality[rows], suggested[rows] = mask, scores, guesses
    outlying = valid & (outlier_scores(sims) > cfg.outlier_threshold)

    checks = [(unreadable, "unreadable", "drop"), (exact_dup, "exact_duplicate",
              cfg.exact_duplicates), (near_dup, "near_duplicate", cfg.near_duplicates),
              (conflicting, "conflicting_labels", cfg.conflicting_labels),
              (mistaken, "label_issue", cfg.label_issues), (outlying, "outlier", cfg.outliers)]
    issues: list[list[str]] = [[] for _ in ids]
    keep = np.ones(len(ids), dtype=bool)
    for found, name, policy in checks:
        for i in np.flatnonzero(found):
            issues[i].append(name)
        if policy == "drop":
            keep &= ~found

    # a person's decisions override the detectors
    verdicts = read_decisions(decisions, set(ids))
    labels = list(df["label"])
    for row, image_id in enumerate(ids):
        action = verdicts.get(image_id, "")
        if action == "drop":
            keep[row] = False
        elif action:
            keep[row] = not unreadable[row]
            if action.startswith("relabel:"):
                labels[row] = action.split(":", 1)[1]

    out = df.copy()
    out["label"] = labels
    out["keep"] = keep
    out["issues"] = [";".join(x) for x in issues]
    out["cluster_id"] = [c or "" for c in clusters]
    out["label_quality"] = [f"{q:.4f}" if np.isfinite(q) else "" for q in quality]
    out["suggested_label"] = [g if m else "" for g, m in zip(suggested, mistaken)]
    out["error"] = errors
    out["decision"] = [verdicts.get(i, "") for i in ids]
    write_manifest(out, output)

    # the ranked review list: one row per (image, issue), most suspicious first
    issue_scores = {"unreadable": np.ones(len(ids)), "exact_duplicate": np.ones(len(ids)),
              "near_duplicate": sims[:, 0] if sims.shape[1] else np.ones(len(ids)),
              "conflicting_labels": np.ones(len(ids)),
              "label_issue": 1 - np.nan_to_num(quality, nan=0.0),
              "outlier": outlier_scores(sims)}
    review = pd.DataFrame([{"image_id": ids[i], "path": df["path"].iloc[i], "issue": name,
                            "score": float(issue_scores[name][i]), "label": df["label"].iloc[i],
                            "suggested_label": out["suggested_label"].iloc[i],
                            "decision": out["decision"].iloc[i]}
                           for found, name, _ in checks for i in np.flatnonzero(found)],
                          columns=["image_id", "path", "issue", "score", "label",
                                   "suggested_label", "decision"])
    review = review.sort_values(["issue", "score", "image_id"], ascending=[True, False, True],
                                key=lambda c: c.map(ISSUE_ORDER) if c.name == "issue" else c)
    review_out.parent.mkdir(parents=True, exist_ok=True)
    review.to_csv(review_out, index=False, lineterminator="\n", float_format="%.6g")
    review_html.write_text(review_page(review, root))

    counts = {"images": len(ids), "kept": int(keep.sum())}
    counts |= {name: int(found.sum()) for found, name, _ in checks}
    counts["clusters"] = int(len({c for c in clusters if c is not None}))
    counts["decisions"] = len(verdicts)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(counts, indent=2) + "\n")
    too_many = [f"{name}: {counts[name] / len(ids):.1%} of images, limit "
                f"clean.max_rate.{name} = {getattr(cfg.max_rate, name):.1%}"
                for _, name, _ in checks if counts[name] / len(ids) > getattr(cfg.max_rate, name)]
    print("clean: kept {kept} of {images} images; ".format(**counts) + ", ".join(
        f"{counts[name]} {name}" for _, name, _ in checks))
    for rel, err in zip(out["path"], errors):
        if err:
            print(f"  unreadable: {rel}: {err}")
    if too_many:
        raise PipelineError("too many problems in the data (see " + str(review_html) +
                            "): " + "; ".join(too_many))
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    data, clean = load_sections("data", "clean")
    run(data, clean, paths.PREPARED, paths.EMBED_DIR, paths.CLEAN,
        paths.METRICS_DIR / "clean.json")


if __name__ == "__main__":
    run_stage("clean", main)
