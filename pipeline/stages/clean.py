"""clean stage: mark unreadable images, exact and near duplicates, conflicting labels,
likely label errors and outliers; write data/clean/manifest.csv.

Rows are never removed: each gets ``keep`` (by the policies in params), ``issues``
(;-joined), ``cluster_id`` (exact or near-duplicate cluster), ``label_quality``
(cleanlab, from out-of-fold probabilities of a linear probe on the embed stage's
features), ``suggested_label`` (for flagged label issues) and ``error`` (why an image
is unreadable). Source images are only read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import paths
from pipeline.config import CleanConfig, DataConfig, PipelineError, load_sections, run_stage
from pipeline.images import UnreadableImage, decode_image, pixel_hash
from pipeline.manifest import read_manifest, resolve, write_manifest
from pipeline.quality import (
    conflicting_clusters,
    exact_duplicate_clusters,
    label_issues,
    near_duplicate_clusters,
    neighbours,
    outlier_scores,
)


def run(data: DataConfig, cfg: CleanConfig, prepared: Path, embed_dir: Path, output: Path,
        metrics: Path) -> pd.DataFrame:
    """Decode every image once, find problems, apply the policies, write the results."""
    df = read_manifest(prepared)
    root = Path(data.root)
    hashes: list[str | None] = []
    errors: list[str] = []
    for rel in tqdm(df["path"], desc="decoding", mininterval=1.0):
        try:
            hashes.append(pixel_hash(decode_image(resolve(root, rel), max_pixels=cfg.max_pixels)))
            errors.append("")
        except UnreadableImage as exc:
            hashes.append(None)
            errors.append(str(exc))
    ids = list(df["image_id"])
    embeddings = np.load(embed_dir / "embeddings.npy")
    embed_meta = json.loads((embed_dir / "meta.json").read_text())
    if embed_meta["ids"] != ids:
        raise PipelineError(f"{embed_dir} does not match {prepared}: rerun dvc repro")
    unreadable = np.array([h is None for h in hashes])
    valid = np.array(embed_meta["valid"]) & ~unreadable

    exact = exact_duplicate_clusters(hashes, order=ids)
    index, sims = neighbours(embeddings, k=cfg.neighbours)
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
        seed=0, filter_by=cfg.label_method)
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

    out = df.copy()
    out["keep"] = keep
    out["issues"] = [";".join(x) for x in issues]
    out["cluster_id"] = [c or "" for c in clusters]
    out["label_quality"] = [f"{q:.4f}" if np.isfinite(q) else "" for q in quality]
    out["suggested_label"] = [g if m else "" for g, m in zip(suggested, mistaken)]
    out["error"] = errors
    write_manifest(out, output)

    counts = {"images": len(ids), "kept": int(keep.sum())}
    counts |= {name: int(found.sum()) for found, name, _ in checks}
    counts["clusters"] = int(len({c for c in clusters if c is not None}))
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(counts, indent=2) + "\n")
    print("clean: kept {kept} of {images} images; ".format(**counts) + ", ".join(
        f"{counts[name]} {name}" for _, name, _ in checks))
    for rel, err in zip(out["path"], errors):
        if err:
            print(f"  unreadable: {rel}: {err}")
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    data, clean = load_sections("data", "clean")
    run(data, clean, paths.PREPARED, paths.EMBED_DIR, paths.CLEAN,
        paths.METRICS_DIR / "clean.json")


if __name__ == "__main__":
    run_stage("clean", main)
