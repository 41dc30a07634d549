"""Leakage audit of a finished split: pure functions over row arrays, no file I/O.

Finds val/test rows with an exact copy (equal pixel hash) or a near copy (cosine
similarity of embeddings at or above a threshold) among the train rows, val/test rows
that share a duplicate cluster or a group with train rows, val/test rows older than (or
within the embargo of) an earlier split, and classes evaluated but never trained on.
Near copies can instead be judged by a calibrated rule over several signals
(:class:`pipeline.dataquality.calibrate.Calibration`, the clean stage's ``auto`` rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.dataquality.calibrate import Calibration, copy_pairs, pair_similarity
from pipeline.dataquality.quality import similar_pairs
from pipeline.modality.image.signals import Signal

KINDS = ("exact_duplicate", "near_duplicate", "duplicate_cluster", "group", "temporal",
         "missing_class")
COPY_KINDS = ("exact_duplicate", "near_duplicate")  # the leak is the pair itself


@dataclass(frozen=True)
class Leak:
    """One leaking val/test row and the train row it leaks with (-1 when none)."""

    kind: str
    row: int
    train_row: int
    detail: str
    similarity: float = float("nan")  # cosine similarity of the two embeddings, if known


def _shared(splits: np.ndarray, keys: Sequence[str | None], kind: str) -> list[Leak]:
    first_train: dict[str, int] = {}
    for i, (key, split) in enumerate(zip(keys, splits)):
        if key and split == "train":
            first_train.setdefault(key, i)
    return [Leak(kind, i, first_train[key], f"{kind} {key!r} is also in train")
            for i, (key, split) in enumerate(zip(keys, splits))
            if key and split in ("val", "test") and key in first_train]


def _similarity(embeddings: np.ndarray | None, i: int, j: int) -> float:
    return float(embeddings[i] @ embeddings[j]) if embeddings is not None else float("nan")


def copies_in_train(splits: np.ndarray, *, hashes: Sequence[str | None] | None,
                    embeddings: np.ndarray | None, threshold: float,
                    signals: Sequence[Signal] | None = None,
                    calibration: Calibration | None = None) -> list[Leak]:
    """Every (val/test row, train row) pair of exact or near copies, each pair once.

    An exact copy (equal pixel hash) is reported as ``exact_duplicate``; a pair whose
    cosine similarity is at least ``threshold`` as ``near_duplicate``. Rows without a
    hash (None) or with a zero embedding (not decoded) match nothing. With a
    ``calibration`` (and its ``signals``, (N, ...) each in its signal order) a pair is a
    near copy when the calibrated rule says so (:func:`pipeline.dataquality.calibrate.copy_pairs`).
    """
    train = np.flatnonzero(splits == "train")
    later = np.flatnonzero(np.isin(splits, ("val", "test")))
    pairs: dict[tuple[int, int], Leak] = {}
    if hashes is not None:
        by_hash: dict[str, list[int]] = {}
        for j in map(int, train):
            if hashes[j]:
                by_hash.setdefault(str(hashes[j]), []).append(j)
        for i in map(int, later):
            for j in by_hash.get(str(hashes[i]), []) if hashes[i] else []:
                pairs[(i, j)] = Leak("exact_duplicate", i, j, "identical content",
                                     _similarity(embeddings, i, j))
    if calibration is not None and signals is not None:
        rows, cols, which = copy_pairs([x[later] for x in signals], [x[train] for x in signals],
                                       calibration)
        for a, b, j in zip(rows, cols, which):
            i, k = int(later[a]), int(train[b])
            sim = float(pair_similarity(signals[j], signals[j], [i], [k])[0])
            pairs.setdefault((i, k), Leak(
                "near_duplicate", i, k, f"{calibration.signals[j]} similarity "
                f"{sim:.4f} >= {calibration.thresholds[j]:.4f} (clean's rule)",
                _similarity(embeddings, i, k)))
    elif embeddings is not None:
        rows, cols, sims = similar_pairs(embeddings[later], embeddings[train],
                                         threshold=threshold)
        for a, b, sim in zip(rows, cols, sims):
            i, j = int(later[a]), int(train[b])
            pairs.setdefault((i, j), Leak("near_duplicate", i, j, f"cosine similarity "
                                          f"{sim:.4f} >= {threshold:g}", float(sim)))
    return sorted(pairs.values(), key=lambda leak: (leak.row, KINDS.index(leak.kind),
                                                    -leak.similarity, leak.train_row))


def audit(splits: Sequence[str], *, labels: Sequence[str], clusters: Sequence[str | None],
          groups: Sequence[str | None] | None = None, times: Sequence[float] | None = None,
          embargo: float = 0.0, hashes: Sequence[str | None] | None = None,
          embeddings: np.ndarray | None = None, near_threshold: float | None = None,
          signals: Sequence[Signal] | None = None, calibration: Calibration | None = None
          ) -> list[Leak]:
    """Every leak in a split.

    Args:
        splits: (N,) train, val or test.
        labels: (N,) class per row.
        clusters: (N,) duplicate-cluster id per row (empty or None: no cluster).
        groups: (N,) group per row, checked when given.
        times: (N,) timestamps (e.g. seconds), checked when given: a val row must be
            newer than every train row by more than ``embargo``, a test row newer than
            every train and val row by more than ``embargo``.
        hashes: (N,) pixel hash per row (None: not decoded), checked when given.
        embeddings: (N, D) float32 L2-normalised rows (zero rows: not decoded), checked
            when given against ``near_threshold`` (cosine similarity).
        signals, calibration: a calibrated near-copy rule and its signals (N, D_s),
            used instead of ``near_threshold`` when given.

    A val/test row paired with a train copy is not reported again as a
    ``duplicate_cluster`` leak with a train member of its own cluster: each leak is
    reported once, by its strongest evidence (exact, near, then shared cluster).
    """
    s = np.asarray(splits, dtype=object)
    if embeddings is not None and near_threshold is None and calibration is None:
        raise ValueError("embeddings given without near_threshold")
    leaks = copies_in_train(s, hashes=hashes, embeddings=embeddings,
                            threshold=near_threshold or 1.0, signals=signals,
                            calibration=calibration)
    paired = {(leak.row, clusters[leak.train_row]) for leak in leaks
              if clusters[leak.train_row]}
    leaks += [Leak(leak.kind, leak.row, leak.train_row, leak.detail,
                   _similarity(embeddings, leak.row, leak.train_row))
              for leak in _shared(s, clusters, "duplicate_cluster")
              if (leak.row, clusters[leak.row]) not in paired]
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
    """(N,) mask of the train rows whose removal ends the copy, cluster, group and
    temporal leaks: the train side of every exact or near copy, every train member of a
    cluster or group that also has val/test rows, and train rows not older than the
    first val/test row by more than the embargo."""
    s = np.asarray(splits, dtype=object)
    drop = np.zeros(len(s), dtype=bool)
    kinds = {leak.kind for leak in leaks}
    drop[[leak.train_row for leak in leaks if leak.kind in COPY_KINDS]] = True
    for keys in (clusters, groups):
        if keys is not None:
            # from the data, not the leaks: a cluster leak is not reported again for a
            # row already paired with a copy, but its other train members leak all the same
            straddling = {keys[leak.row] for leak in _shared(s, keys, "")}
            drop |= np.array([split == "train" and bool(k) and k in straddling
                              for k, split in zip(keys, s)], dtype=bool)
    if "temporal" in kinds and times is not None:
        t = np.asarray(times, dtype=float)
        later = np.isin(s, ("val", "test"))
        drop |= (s == "train") & (t >= t[later].min() - embargo)
    return drop
