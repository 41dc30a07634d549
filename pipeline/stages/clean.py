"""clean stage: mark unreadable images and duplicates; write data/clean/manifest.csv.

Rows are never removed: each gets ``keep``, ``issues`` (;-joined), ``cluster_id``,
``label_quality`` and ``suggested_label`` (filled by the label-error check; empty
until it runs), and ``error`` (why an image is unreadable). Source images are only read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import paths
from pipeline.config import CleanConfig, DataConfig, load_sections, run_stage
from pipeline.images import UnreadableImage, decode_image, pixel_hash
from pipeline.manifest import read_manifest, resolve, write_manifest
from pipeline.quality import conflicting_clusters, exact_duplicate_clusters


def run(data: DataConfig, cfg: CleanConfig, prepared: Path, output: Path,
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
    clusters = exact_duplicate_clusters(hashes, order=ids)
    conflicting = conflicting_clusters(list(clusters), list(df["label"]))
    unreadable = np.array([h is None for h in hashes])
    in_cluster = np.array([c is not None for c in clusters])
    representative = np.array([c == i for c, i in zip(clusters, ids)])
    duplicate = in_cluster & ~representative

    issues: list[list[str]] = [[] for _ in ids]
    keep = np.ones(len(ids), dtype=bool)
    for i in range(len(ids)):
        if unreadable[i]:
            issues[i].append("unreadable")
            keep[i] = False
        if duplicate[i]:
            issues[i].append("exact_duplicate")
            keep[i] &= cfg.exact_duplicates == "flag"
        if conflicting[i]:
            issues[i].append("conflicting_labels")
            keep[i] &= cfg.conflicting_labels == "flag"

    out = df.copy()
    out["keep"] = keep
    out["issues"] = [";".join(x) for x in issues]
    out["cluster_id"] = [c or "" for c in clusters]
    out["label_quality"] = ""
    out["suggested_label"] = ""
    out["error"] = errors
    write_manifest(out, output)

    counts = {
        "images": len(ids),
        "kept": int(keep.sum()),
        "unreadable": int(unreadable.sum()),
        "exact_duplicate": int(duplicate.sum()),
        "conflicting_labels": int(conflicting.sum()),
        "clusters": int(len({c for c in clusters if c is not None})),
    }
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(counts, indent=2) + "\n")
    print(f"clean: kept {counts['kept']} of {counts['images']} images "
          f"({counts['unreadable']} unreadable, {counts['exact_duplicate']} exact duplicates, "
          f"{counts['conflicting_labels']} with conflicting labels)")
    for rel, err in zip(out["path"], errors):
        if err:
            print(f"  unreadable: {rel}: {err}")
    return out


def main() -> None:
    """Entry point of the DVC stage."""
    data, clean = load_sections("data", "clean")
    run(data, clean, paths.PREPARED, paths.CLEAN, paths.METRICS_DIR / "clean.json")


if __name__ == "__main__":
    run_stage("clean", main)
