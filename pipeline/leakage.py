"""Leakage audit of a finished split: pure functions over row arrays, no file I/O.

Finds val/test rows that share a duplicate cluster or a group with train rows, val/test
rows older than (or within the embargo of) an earlier split, and classes evaluated but
never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("duplicate_cluster", "group", "temporal", "missing_class")


@dataclass(frozen=True)
class Leak:
    """One leaking val/test row and the train row it leaks with (-1 when none)."""

    kind: str
    row: int
    train_row: int
    detail: str


def _shared(splits: np.ndarray, keys: Sequence[str | None], kind: str) -> list[Leak]:
    first_train: dict[str, int] = {}
    for i, (key, split) in enumerate(zip(keys, splits)):
        if key and split == "train":
            first_train.setdefault(key, i)
    return [Leak(kind, i, first_train[key], f"{kind} {key!r} is also in train")
            for i, (key, split) in enumerate(zip(keys, splits))
            if key and split in ("val", "test") and key in first_train]


def audit(splits: Sequence[str], *, labels: Sequence[str], clusters: Sequence[str | None],
          groups: Sequence[str | None] | None = None, times: Sequence[float] | None = None,
          embargo: float = 0.0) -> list[Leak]:
    """Every leak in a split.

    Args:
        splits: (N,) train, val or test.
        labels: (N,) class per row.
        clusters: (N,) duplicate-cluster id per row (empty or None: no cluster).
        groups: (N,) group per row, checked when given.
        times: (N,) timestamps (e.g. seconds), checked when given: a val row must be
            newer than every train row by more than ``embargo``, a test row newer than
            every train and val row by more than ``embargo``.
    """
    s = np.asarray(splits, dtype=object)
    leaks = _shared(s, clusters, "duplicate_cluster")
    if groups is not None:
        leaks += _shared(s, groups, "group")
    if times is not None:
        t = np.asarray(times, dtype=float)
        for name, earlier in (("val", ("train",)), ("test", ("train", "val"))):
            before = np.flatnonzero(np.isin(s, earlier))
            if not len(before):
                continue
            newest = int(before[np.argmax(t[before])])
            for i in map(int, np.flatnonzero(s == name)):
                if t[i] <= t[newest] + embargo:
                    leaks.append(Leak("temporal", i, newest,
                                      f"{name} row is not newer than {s[newest]} row "
                                      f"by more than the embargo"))
    trained = {lab for lab, split in zip(labels, s) if split == "train"}
    reported: set[str] = set()
    for i, (lab, split) in enumerate(zip(labels, s)):
        if split in ("val", "test") and lab not in trained and lab not in reported:
            reported.add(lab)
            leaks.append(Leak("missing_class", i, -1, f"class {lab!r} is not in train"))
    return leaks


def train_rows_to_drop(splits: Sequence[str], leaks: Sequence[Leak], *,
                       clusters: Sequence[str | None], groups: Sequence[str | None] | None,
                       times: Sequence[float] | None, embargo: float = 0.0) -> np.ndarray:
    """(N,) mask of the train rows whose removal ends the cluster, group and temporal
    leaks: every train member of a leaking cluster or group, and train rows not older
    than the first val/test row by more than the embargo."""
    s = np.asarray(splits, dtype=object)
    drop = np.zeros(len(s), dtype=bool)
    kinds = {leak.kind for leak in leaks}
    for kind, keys in (("duplicate_cluster", clusters), ("group", groups)):
        if kind in kinds and keys is not None:
            leaking = {keys[leak.row] for leak in leaks if leak.kind == kind}
            drop |= np.array([split == "train" and bool(k) and k in leaking
                              for k, split in zip(keys, s)])
    if "temporal" in kinds and times is not None:
        t = np.asarray(times, dtype=float)
        later = np.isin(s, ("val", "test"))
        drop |= (s == "train") & (t >= t[later].min() - embargo)
    return drop
