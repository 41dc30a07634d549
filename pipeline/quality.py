"""Data-quality detectors: arrays in, masks and cluster ids out, no file I/O."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def exact_duplicate_clusters(hashes: Sequence[str | None], *,
                             order: Sequence[str]) -> np.ndarray:
    """Group rows whose pixel hashes are equal.

    Args:
        hashes: (N,) pixel hash per row; None for rows that could not be decoded.
        order: (N,) sort keys (e.g. image ids); the smallest member of a cluster is
            its representative.

    Returns:
        (N,) object array: the representative's key for rows in a cluster of two or
        more, None otherwise.
    """
    members: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            members.setdefault(h, []).append(i)
    cluster = np.full(len(hashes), None, dtype=object)
    for rows in members.values():
        if len(rows) > 1:
            representative = min(rows, key=lambda i: order[i])
            for i in rows:
                cluster[i] = order[representative]
    return cluster


def conflicting_clusters(clusters: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """(N,) bool mask: rows whose cluster holds more than one distinct label."""
    seen: dict[str, set[str]] = {}
    for c, label in zip(clusters, labels):
        if c is not None:
            seen.setdefault(c, set()).add(label)
    return np.array([c is not None and len(seen[c]) > 1 for c in clusters], dtype=bool)


def neighbours(embeddings: np.ndarray, *, k: int, chunk: int = 2048
               ) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row by cosine similarity, itself excluded.

    Args:
        embeddings: (N, D) float32, L2-normalised rows (zero rows never match).
    Returns:
        (N, k) int64 neighbour indices and (N, k) float32 similarities, best first.
        Memory is (chunk, N) at a time: linear in N, never N x N.
    """
    n = len(embeddings)
    k = min(k, max(n - 1, 0))
    index = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return index, sims
    for start, block in _similarity_blocks(embeddings, embeddings, chunk):  # (chunk, N)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        index[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        sims[start:start + chunk] = np.take_along_axis(top_sims, order, axis=1)
    return index, sims


def _similarity_blocks(queries: np.ndarray, reference: np.ndarray, chunk: int
                       ) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (chunk, M) cosine similarities) for consecutive chunks of the query rows."""
    for start in range(0, len(queries), chunk):
        yield start, queries[start:start + chunk] @ reference.T


def similar_pairs(queries: np.ndarray, reference: np.ndarray, *, threshold: float,
                  chunk: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, reference) pair whose cosine similarity is at least ``threshold``.

    Unlike :func:`neighbours` there is no k: a query with many copies in the reference
    set gets them all (a leakage audit must find every one).

    Args:
        queries: (Q, D) float32, L2-normalised rows (zero rows never match).
        reference: (M, D) float32, L2-normalised rows.
        threshold: cosine similarity in (0, 1].
        chunk: query rows per block; by default a block holds at most 2**24
            similarities (64 MiB), whatever M.
    Returns:
        (P,) int64 query rows, (P,) int64 reference rows and (P,) float32 similarities,
        ordered by query row, then most similar first. Memory is one (chunk, M) block at
        a time plus the pairs found: linear in Q + M, never Q x M.
    """
    if chunk is None:
        chunk = max(1, min(4096, (1 << 24) // max(len(reference), 1)))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(reference):
        for start, block in _similarity_blocks(queries, reference, chunk):
            rows, cols = np.nonzero(block >= threshold)
            found.append((rows + start, cols, block[rows, cols]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, cols, sims = (np.concatenate(parts) for parts in zip(*found))
    order = np.lexsort((cols, -sims, rows))
    return (rows[order].astype(np.int64), cols[order].astype(np.int64),
            sims[order].astype(np.float32))


def near_duplicate_clusters(index: np.ndarray, sims: np.ndarray, *, threshold: float,
                            order: Sequence[str], valid: np.ndarray) -> np.ndarray:
    """Link rows whose cosine similarity is at least ``threshold`` (union-find).

    Args:
        index, sims: (N, k) from :func:`neighbours`.
        order: (N,) sort keys; a cluster is named by its smallest member's key.
        valid: (N,) bool, rows with an embedding.
    Returns:
        (N,) object array: the cluster's key for rows in a cluster of two or more, else None.
    """
    parent = list(range(len(order)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (row_index, row_sims) in enumerate(zip(index, sims)):
        if not valid[i]:
            continue
        for j, s in zip(row_index, row_sims):
            if s >= threshold and valid[j]:
                a, b = find(i), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    members: dict[int, list[int]] = {}
    for i in range(len(order)):
        members.setdefault(find(i), []).append(i)
    cluster = np.full(len(order), None, dtype=object)
    for rows in members.values():
        if len(rows) > 1:
            name = min(order[i] for i in rows)
            for i in rows:
                cluster[i] = name
    return cluster


def label_issues(embeddings: np.ndarray, labels: Sequence[str], *, folds: int, seed: int,
                 filter_by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Likely label errors from out-of-fold predictions of a linear probe (cleanlab).

    Returns (N,) bool issue mask, (N,) label quality in 0..1, (N,) suggested labels (the
    probe's prediction) and a note (empty, or why fewer folds or no check ran).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    n = len(y)
    smallest = int(np.bincount(y).min()) if n else 0
    if len(classes) < 2 or smallest < 2:
        note = ("label check skipped: it needs two classes with at least 2 images each "
                f"(smallest class has {smallest})")
        return np.zeros(n, bool), np.full(n, np.nan), np.array([""] * n, object), note
    k = min(folds, smallest)
    note = "" if k == folds else (f"label check used {k} folds, not {folds}: the smallest "
                                  f"class has {smallest} images")
    probe = LogisticRegression(max_iter=1000, C=1.0)
    probs = cross_val_predict(probe, embeddings, y, method="predict_proba",
                              cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    mask = find_label_issues(y, probs, filter_by=filter_by)
    quality = get_label_quality_scores(y, probs)
    return mask, quality, classes[probs.argmax(1)], note


def outlier_scores(sims: np.ndarray) -> np.ndarray:
    """(N,) mean cosine distance to the k nearest neighbours (0 = typical, 2 = far)."""
    return 1.0 - sims.mean(1) if sims.shape[1] else np.zeros(len(sims))
