"""Benchmark: split and audit a large manifest with groups. Run on purpose; prints numbers.

    PYTHONPATH=. python benchmarks/split_large.py [--rows 1000000] [--method group] [--dim 0]
        [--smoke]

Makes a synthetic kept-rows manifest (100 classes, one group per 20 rows, 1 % of rows
in duplicate clusters of two, a pixel hash per row), then times the split stage's
assignment and its leakage audit, as ``dvc repro`` runs them (file I/O aside). With
``--dim D`` the rows also get random unit embeddings of dimension D (1280 for the
default backbone; N x D float32 must fit in memory) and the audit runs the near-copy
search (at cosine 0.98 when split.near_duplicate_threshold is auto). ``PYTHONPATH=.``
makes Python import this checkout's ``pipeline``, not an installed one. ``--smoke``:
2,000 rows with 16-dimensional embeddings, in seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import add_smoke

from pipeline.core.config import parse_sections
from pipeline.splitting.rules import assign, audit_split

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--method", default="group")
    parser.add_argument("--dim", type=int, default=0, help="embedding dimension (0: none)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.dim = 2000, 16
    n = args.rows
    rng = np.random.default_rng(0)
    ids = np.char.add("img", np.arange(n).astype(str))
    clusters = np.full(n, "", dtype=object)
    paired = rng.choice(n, size=n // 100, replace=False)
    clusters[paired] = np.char.add("c", (np.arange(len(paired)) // 2).astype(str))
    df = pd.DataFrame({"image_id": ids, "path": np.char.add(ids, ".png"),
                       "label": rng.integers(0, 100, n).astype(str),
                       "group": np.char.add("g", rng.integers(0, n // 20, n).astype(str)),
                       "timestamp": pd.to_datetime(rng.integers(0, 10**9, n), unit="s"
                                                   ).astype(str),
                       "cluster_id": clusters})
    # pixel hashes: the members of a duplicate cluster are identical images
    hashes: list[str | None] = [c or i for c, i in zip(clusters, ids)]
    embeddings = None
    if args.dim:
        embeddings = rng.standard_normal((n, args.dim), dtype=np.float32)
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"]["method"] = args.method
    if params["split"]["near_duplicate_threshold"] == "auto":
        # auto takes clean's calibrated rule, which needs real images: a fixed cosine here
        params["split"]["near_duplicate_threshold"] = 0.98
    (cfg,) = parse_sections(params, "split")
    start = time.perf_counter()
    splits = assign(df, cfg, seed=0)
    split_seconds = time.perf_counter() - start
    start = time.perf_counter()
    leaks = audit_split(df.assign(split=splits).reset_index(drop=True), cfg,
                        embeddings=embeddings, hashes=hashes)
    audit_seconds = time.perf_counter() - start
    counts = pd.Series(splits).value_counts().to_dict()
    print(f"{n:,} rows, method {args.method}, embedding dimension {args.dim or 'none'}: "
          f"assign {split_seconds:.1f} s, audit {audit_seconds:.1f} s, total "
          f"{split_seconds + audit_seconds:.1f} s; "
          f"splits {counts}; leaks {len(leaks)}")


if __name__ == "__main__":
    main()
