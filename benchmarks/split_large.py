"""Benchmark: split and audit a large manifest with groups. Run on purpose; prints numbers.

    python benchmarks/split_large.py [--rows 1000000] [--method group]

Makes a synthetic kept-rows manifest (100 classes, one group per 20 rows, 1 % of rows
in duplicate clusters of two), then times the split stage's assignment and its leakage
audit, as ``dvc repro`` runs them (file I/O aside).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.config import parse_sections
from pipeline.stages.split import assign, audit_split

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--method", default="group")
    args = parser.parse_args()
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
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["split"]["method"] = args.method
    (cfg,) = parse_sections(params, "split")
    start = time.perf_counter()
    splits = assign(df, cfg, seed=0)
    split_seconds = time.perf_counter() - start
    start = time.perf_counter()
    leaks = audit_split(df.assign(split=splits).reset_index(drop=True), cfg)
    audit_seconds = time.perf_counter() - start
    counts = pd.Series(splits).value_counts().to_dict()
    print(f"{n:,} rows, method {args.method}: assign {split_seconds:.1f} s, audit "
          f"{audit_seconds:.1f} s, total {split_seconds + audit_seconds:.1f} s; "
          f"splits {counts}; leaks {len(leaks)}")


if __name__ == "__main__":
    main()
