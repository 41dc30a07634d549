"""Data-quality detectors: arrays in, masks and cluster ids out, no file I/O."""

from __future__ import annotations

from collections.abc import Sequence

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
