"""Benchmark: the clean stage's detectors on 100,000 precomputed embeddings. Prints numbers.

    python benchmarks/clean_scale.py [--rows 100000] [--dim 1280] [--classes 100]
        [--set clean.label_probe=logistic ...] [--views] [--smoke]

Synthesises embeddings shaped like a backbone's pooled features: a shared positive mean
direction (post-ReLU features all point one way), one centre per class drawn from a
256-dimensional subspace with a decaying spectrum, within-class variation in the same
subspace plus isotropic noise, L2-normalised, float32. Then plants 1 % near copies
(cosine similarity about 0.99 to their source), 0.1 % exact copies and 2 % label flips,
and runs, in the order and with the arguments the clean stage uses, every detector of
pipeline/dataquality/quality.py: exact clusters, the neighbour search, near-duplicate clusters,
conflicting labels, label issues (out-of-fold probe + cleanlab) and outlier scores.
Prints the wall and CPU seconds of each, the total, the peak resident memory
(ru_maxrss) and how many planted defects were found. Params come from params.yaml with
``--set`` overrides; the default ``clean.label_probe: auto`` picks ``lda`` at this size
(``logistic`` takes minutes).

``--views`` also times the near-copy search of the aligned-views signal
(:func:`pipeline.dataquality.calibrate.view_neighbours`, (N, 48, 64) float32: 12 KB per image) on
synthetic views: each image a class pattern plus noise, its 48 views small perturbations
of its whole view, with the same rows planted as near copies.

``--smoke``: 1,000 rows of dimension 64 in 4 classes, with ``--views``, in seconds.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from common import add_smoke, load_params, smoke_params

from pipeline.core.config import parse_sections
from pipeline.dataquality.calibrate import view_neighbours
from pipeline.dataquality.quality import (
    conflicting_clusters,
    exact_duplicate_clusters,
    label_issues,
    near_duplicate_clusters,
    neighbours,
    outlier_scores,
    outliers,
)
from pipeline.modality.image.signals import ALIGNED_SIZE, ALIGNED_VIEWS


def synthesise(n: int, dim: int, classes: int, seed: int, *, separation: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 L2-normalised embeddings and (N,) int labels (see the module doc)."""
    rng = np.random.default_rng(seed)
    rank = min(256, dim)
    mean = np.abs(rng.standard_normal(dim)).astype(np.float32)
    mean /= np.linalg.norm(mean)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # (rank, D)
    spectrum = (1 / np.sqrt(1 + np.arange(rank))).astype(np.float32)
    centres = (rng.standard_normal((classes, rank)).astype(np.float32) * spectrum) @ basis
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 10_000):
        stop = min(start + 10_000, n)
        within = (rng.standard_normal((stop - start, rank), dtype=np.float32) * spectrum) @ basis
        within /= np.sqrt((spectrum ** 2).sum())
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.6 / np.sqrt(dim)
        x[start:stop] = mean + centres[y[start:stop]] + within + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def synthesise_views(n: int, seed: int, source: np.ndarray, copies: np.ndarray
                     ) -> np.ndarray:
    """(N, VIEWS, D) float32 unit views (see the module doc); ``copies`` repeat ``source``
    with a little noise."""
    rng = np.random.default_rng(seed)
    d = ALIGNED_SIZE ** 2
    basis = rng.standard_normal((16, d)).astype(np.float32)
    centres = rng.standard_normal((100, 16)).astype(np.float32)
    views = np.empty((n, ALIGNED_VIEWS, d), dtype=np.float32)
    for start in range(0, n, 5_000):
        m = min(5_000, n - start)
        whole = (centres[rng.integers(0, 100, m)]
                 + 0.6 * rng.standard_normal((m, 16), dtype=np.float32)) @ basis
        whole += 0.3 * rng.standard_normal((m, d), dtype=np.float32)
        scale = 0.15 / 8 * np.linalg.norm(whole, axis=1)[:, None, None]
        part = whole[:, None, :] + scale * rng.standard_normal((m, ALIGNED_VIEWS, d),
                                                               dtype=np.float32)
        part[:, 0] = whole
        part -= part.mean(2, keepdims=True)
        views[start:start + m] = part / np.linalg.norm(part, axis=2, keepdims=True)
    views[copies] = views[source] + 0.02 * rng.standard_normal(views[source].shape,
                                                               dtype=np.float32)
    views[copies] /= np.linalg.norm(views[copies], axis=2, keepdims=True)
    return views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--separation", type=float, default=0.4,
                        help="norm of the class centres' offsets (smaller: harder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, as dvc exp run -S (repeatable)")
    parser.add_argument("--views", action="store_true",
                        help="also the aligned views' near-copy search (12 KB per image)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.dim, args.classes, args.views = 1000, 64, 4, True
    (cfg,) = parse_sections((smoke_params if args.smoke else load_params)(args.set), "clean")
    # auto calibrates on copies of real images; these planted copies sit near cosine 0.99
    threshold = 0.98 if cfg.near_duplicate_threshold == "auto" else \
        float(cfg.near_duplicate_threshold)
    n = args.rows
    rng = np.random.default_rng(args.seed + 1)
    start = time.perf_counter()
    x, y = synthesise(n, args.dim, args.classes, args.seed, separation=args.separation)
    # plant: 1 % near copies, 0.1 % exact copies (same hash), 2 % flipped labels
    rows = rng.permutation(n)
    near_src, near_dst = rows[:n // 100], rows[n // 100:n // 50]
    x[near_dst] = x[near_src] + rng.standard_normal((len(near_src), args.dim),
                                                    dtype=np.float32) * 0.004
    x[near_dst] /= np.linalg.norm(x[near_dst], axis=1, keepdims=True)
    y[near_dst] = y[near_src]
    exact_src, exact_dst = rows[n // 50:n // 50 + n // 1000], rows[n // 50 + n // 1000:
                                                                  n // 50 + n // 500]
    x[exact_dst], y[exact_dst] = x[exact_src], y[exact_src]
    flipped = rows[n // 50 + n // 500:n // 50 + n // 500 + n // 50]
    labels = np.array([f"c{v:03d}" for v in y], dtype=object)
    true_labels = labels.copy()
    labels[flipped] = [f"c{(v + 1 + rng.integers(args.classes - 1)) % args.classes:03d}"
                       for v in y[flipped]]
    hashes = [f"h{i}" for i in range(n)]
    for a, b in zip(exact_src, exact_dst):
        hashes[b] = hashes[a]
    ids = [f"{i:08d}" for i in range(n)]
    valid = np.ones(n, dtype=bool)
    print(f"synthesised {n:,} x {args.dim} float32 embeddings ({x.nbytes / 2**20:.0f} MiB), "
          f"{args.classes} classes, in {time.perf_counter() - start:.1f} s; planted "
          f"{len(near_dst)} near copies, {len(exact_dst)} exact copies, "
          f"{len(flipped)} label flips", flush=True)
    print(f"params: neighbours={cfg.neighbours}, exact_search_max={cfg.exact_search_max}, "
          f"search_probes={cfg.search_probes}, near_duplicate_threshold="
          f"{threshold} ({cfg.near_duplicate_threshold}), label_probe={cfg.label_probe} "
          f"({', '.join(cfg.probes_for(n, ('embedding',)))}), "
          f"probe_dims={cfg.probe_dims}, label_folds={cfg.label_folds}, "
          f"label_method={cfg.label_method}", flush=True)

    timings: list[tuple[str, float, float]] = []

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        print(f"  {name} ...", end="", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        timings.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        print(f" {timings[-1][1]:.1f} s wall, {timings[-1][2]:.1f} s CPU", flush=True)
        return result

    exact = timed("exact clusters", lambda: exact_duplicate_clusters(hashes, order=ids))
    index, sims = timed("neighbours", lambda: neighbours(
        x, k=cfg.neighbours, exact_max=cfg.exact_search_max, probes=cfg.search_probes))
    near = timed("near-duplicate clusters", lambda: near_duplicate_clusters(
        index, sims, threshold=threshold, order=ids, valid=valid))
    clusters = [a if a is not None else b for a, b in zip(near, exact)]
    conflicting = timed("conflicting labels", lambda: conflicting_clusters(clusters, labels))
    check = timed("label issues", lambda: label_issues(
        x, labels, folds=cfg.label_folds, seed=0, filter_by=cfg.label_method,
        probes=cfg.probes_for(len(labels), ("embedding",)), dims=cfg.probe_dims,
        votes={"embedding": (index, sims)}))
    print(f"  {check.summary()}")
    mask, note = check.mask, check.note
    scores = timed("outlier scores", lambda: outlier_scores(sims))
    if args.views:
        views = synthesise_views(n, args.seed + 2, near_src, near_dst)
        view_index, _ = timed("aligned views' neighbours", lambda: view_neighbours(
            views, k=cfg.neighbours, exact_max=cfg.exact_search_max,
            probes=cfg.search_probes))
        found_views = np.mean([s in view_index[d] for s, d in zip(near_src, near_dst)])
    total_wall = sum(t[1] for t in timings)
    total_cpu = sum(t[2] for t in timings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    print(f"total {total_wall:.1f} s wall, {total_cpu:.1f} s CPU; peak memory (ru_maxrss) "
          f"{peak:.2f} GiB")

    found_near = np.mean([near[a] is not None and near[a] == near[b]
                          for a, b in zip(near_src, near_dst)])
    in_clusters = sum(c is not None for c in near)
    flip_set = set(flipped.tolist())
    hits = sum(1 for i in np.flatnonzero(mask) if i in flip_set)
    accuracy = float(np.mean(labels == true_labels))
    print(f"near copies found with their source: {found_near:.3f}; rows in near clusters "
          f"{in_clusters} (planted pairs: {2 * len(near_dst)}); conflicting rows "
          f"{int(conflicting.sum())}")
    print(f"label issues: {int(mask.sum())} flagged, recall of flips "
          f"{hits / len(flip_set):.3f}, precision {hits / max(int(mask.sum()), 1):.3f} "
          f"(given labels {accuracy:.1%} right){'; ' + note if note else ''}")
    if args.views:
        print(f"aligned views ({views.nbytes / 2**30:.2f} GiB): planted copies among their "
              f"source's {cfg.neighbours} neighbours: {found_views:.3f}")
    odd, rule = outliers(scores, np.ones(len(scores), dtype=bool), cfg.outlier_threshold)
    print(f"outlier scores: median {np.median(scores):.3f}, {int(odd.sum())} outliers ({rule})")


if __name__ == "__main__":
    main()
