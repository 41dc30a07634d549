"""Train/val/test assignment: pure functions over labels and cluster keys."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class SplitError(ValueError):
    """The requested split cannot be made from this data."""


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split n items into len(fractions) counts by largest remainder, at least 1 in train."""
    raw = [n * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    if n > 0 and counts[0] == 0:  # every class must reach train
        donor = max(range(1, len(counts)), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[0] += 1
    return counts


def _units(keys: Sequence[str]) -> tuple[list[str], dict[str, list[int]]]:
    """Group rows into units by key (a duplicate cluster or the image itself), sorted."""
    units: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        units.setdefault(key, []).append(i)
    return sorted(units), units


def split_units(labels: Sequence[str], keys: Sequence[str], *, fractions: Sequence[float],
                seed: int, stratify: bool) -> np.ndarray:
    """Assign each row to train/val/test, keeping rows that share a key together.

    Args:
        labels: (N,) class label per row.
        keys: (N,) unit key per row: rows with equal keys (duplicate clusters) always
            land in the same split. Use the image id for rows in no cluster.
        fractions: (3,) shares of train, val and test.
        seed: the result depends only on the data and this seed, not on row order.
        stratify: allocate per class (by each unit's first label) so every class gets
            its share, within one unit; otherwise allocate over all units at once.

    Returns:
        (N,) array of split names.
    """
    order, units = _units(keys)
    rng = np.random.default_rng(seed)
    strata: dict[str, list[str]] = {}
    for key in order:
        stratum = labels[units[key][0]] if stratify else ""
        strata.setdefault(stratum, []).append(key)
    out = np.empty(len(labels), dtype=object)
    for stratum in sorted(strata):
        members = strata[stratum]
        shuffled = [members[i] for i in rng.permutation(len(members))]
        counts = _allocate(len(shuffled), fractions)
        start = 0
        for name, count in zip(SPLITS, counts):
            for key in shuffled[start:start + count]:
                out[units[key]] = name
            start += count
    return out


def assign_folds(labels: Sequence[str], keys: Sequence[str], *, k: int, seed: int
                 ) -> np.ndarray:
    """Deal rows into k folds for cross-validation, stratified, rows sharing a key together.

    scikit-learn's StratifiedGroupKFold (shuffled by ``seed``) over units: rows with equal
    keys (a duplicate cluster, a group) land in one fold, and each class spreads over the
    folds as evenly as the units allow. Rows are ordered by key first, so the result
    depends only on the data and the seed, not on row order.

    Args:
        labels: (N,) class label per row.
        keys: (N,) unit key per row, as for :func:`split_units`.
        k: number of folds, at least 2.

    Returns:
        (N,) int64 fold per row, in 0..k-1.

    Raises:
        SplitError: fewer units than folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    order, units = _units(keys)
    if len(order) < k:
        raise SplitError(f"{len(order)} images (or duplicate clusters / groups) cannot fill "
                         f"{k} folds")
    rows = np.array([i for key in order for i in units[key]])
    group = np.array([n for n, key in enumerate(order) for _ in units[key]])
    y = np.asarray(labels, dtype=object)[rows].astype(str)
    out = np.empty(len(labels), dtype=np.int64)
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(folds.split(np.zeros(len(rows)), y, group)):
        out[rows[held_out]] = fold
    return out


def predefined_layout(given: Sequence[str]) -> tuple[np.ndarray, str]:
    """What a source's own split folders mean, before any val is carved.

    ``train/ val/ test/`` and ``train/ test/`` are used as they are (a missing val is
    carved from train afterwards). ``train/ val/`` (the layout of PyTorch's
    transfer-learning tutorial and of Ultralytics) has no test set: its ``val/`` is
    the held-out set the user evaluates on, so it becomes test, and val is carved from
    train. Layouts without train, or with nothing held out, cannot work.

    Args:
        given: (N,) split per row from the source (train, val or test).

    Returns:
        (N,) split per row as the pipeline uses it, and the decision in words.

    Raises:
        SplitError: values other than train/val/test, or a layout that cannot work; the
            message names the layout and what to do.
    """
    given_arr = np.asarray(given, dtype=object)
    bad = sorted({str(s) for s in given_arr if s not in SPLITS})
    if bad:
        raise SplitError(f"predefined split has values {bad}; expected train, val or test")
    counts = {s: int((given_arr == s).sum()) for s in SPLITS if (given_arr == s).any()}
    layout = " ".join(f"{s}/ ({n})" for s, n in counts.items())
    if "train" not in counts:
        raise SplitError(f"the source has {layout} but no train/: nothing to train on; add "
                         f"a train/ folder (or train rows in the split column), or use "
                         f"split.method: stratified to divide all images by split.fractions")
    if "val" not in counts and "test" not in counts:
        raise SplitError(f"the source has only {layout}: no held-out images to test on; add "
                         f"a test/ (or val/) folder, or use split.method: stratified to "
                         f"divide the images by split.fractions")
    if "test" not in counts:
        return (np.where(given_arr == "val", "test", given_arr).astype(object),
                f"layout {layout}: val/ is the held-out set, so it becomes test; val is "
                f"carved from train/, stratified")
    if "val" not in counts:
        return given_arr.copy(), f"layout {layout}: test/ is test; val is carved from " \
                                 f"train/, stratified"
    return given_arr.copy(), f"layout {layout}: used as it is"


def carve_val(labels: Sequence[str], keys: Sequence[str], given: Sequence[str], *,
              val_fraction: float, seed: int) -> np.ndarray:
    """Keep a predefined split; when it has no val rows, move a stratified share of train.

    Args:
        given: (N,) split per row from the source (train, val or test).
        val_fraction: share of the train rows moved to val when val is empty.
    """
    given_arr = np.asarray(given, dtype=object)
    bad = sorted({str(s) for s in given_arr if s not in SPLITS})
    if bad:
        raise SplitError(f"predefined split has values {bad}; expected train, val or test")
    if (given_arr == "val").any() or val_fraction == 0:
        return given_arr.copy()
    train = [int(i) for i in np.flatnonzero(given_arr == "train")]
    sub = split_units([labels[i] for i in train], [keys[i] for i in train],
                      fractions=(1 - val_fraction, val_fraction, 0.0), seed=seed,
                      stratify=True)
    out = given_arr.copy()
    out[train] = sub
    return out


def check_classes(labels: Sequence[str], splits: Sequence[str]) -> list[str]:
    """Raise if a class has no training image; return warnings for classes missing in val/test."""
    labels_arr = np.asarray(labels, dtype=object)
    splits_arr = np.asarray(splits, dtype=object)
    warnings = []
    for label in sorted(set(labels_arr)):
        present = set(splits_arr[labels_arr == label])
        if "train" not in present:
            raise SplitError(f"class {label!r} has no image in train "
                             f"({int((labels_arr == label).sum())} images in all)")
        missing = [s for s in ("val", "test") if s not in present and (splits_arr == s).any()]
        if missing:
            warnings.append(f"class {label!r} has no image in {' or '.join(missing)}")
    return warnings


def merge_keys(*columns: Sequence[str | None]) -> list[str]:
    """Unit key per row such that rows sharing any non-empty value in any column match.

    E.g. a duplicate-cluster column and a group column: two rows end up in one unit
    if they are linked by a chain of shared clusters or groups (union-find).
    """
    n = len(columns[0])
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for col_index, column in enumerate(columns):
        first: dict[str, int] = {}
        for i, value in enumerate(column):
            if value is None or value == "":
                continue
            tag = f"{col_index}:{value}"
            if tag in first:
                parent[find(i)] = find(first[tag])
            else:
                first[tag] = i
    return [str(find(i)) for i in range(n)]


def parse_times(values: Sequence[str]) -> np.ndarray:
    """(N,) float seconds since 1970 UTC of dates or times; NaN where a value is none.

    ISO-8601 values may mix zones in one column: ``Z`` and offsets such as ``+05:00`` are
    converted to UTC, and a value without a zone (``2024-01-31``, ``2024-01-31 12:00``)
    is taken as UTC, never as this machine's local time (which would make a split depend
    on where it runs). Other spellings pandas reads (``Jan 31 2024``) are read one by one.
    """
    series = pd.Series(list(values), dtype=object).astype(str)
    times = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
    rest = times.isna()
    if rest.any():  # not ISO-8601: one value at a time
        times[rest] = pd.to_datetime(series[rest], errors="coerce", utc=True, format="mixed")
    return (times - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)


def _snap(cut: int, times: Sequence[float]) -> int:
    """The cut (an index into ascending ``times``) moved to the nearest change of time,
    so that equal times never fall on both sides; never to 0 unless nothing else fits."""
    def clear(c: int) -> bool:
        return c <= 0 or c >= len(times) or times[c - 1] != times[c]

    low, high = cut, cut
    while not clear(low):
        low -= 1
    while not clear(high):
        high += 1
    if low > 0 and (cut - low <= high - cut or high >= len(times)):
        return low
    return high


def split_temporal(times: Sequence[float], keys: Sequence[str], *,
                   fractions: Sequence[float], cutoffs: Sequence[float] = (),
                   embargo: float = 0.0) -> np.ndarray:
    """Oldest units to train, then val, newest to test.

    A unit (rows sharing a key) is placed by its latest timestamp, so it never reaches
    into a later split's time range from an earlier one. Without ``cutoffs`` the units
    are divided by ``fractions``, each cut moved to the nearest change of time so that
    equal timestamps never straddle two splits; with ``cutoffs`` = (val_start,
    test_start), in the units of ``times``, by those instants. Units whose time falls
    within ``embargo`` before the start of the next split are left out: their split is "".
    """
    times_arr = np.asarray(times, dtype=float)
    order, units = _units(keys)
    unit_time = {k: float(times_arr[units[k]].max()) for k in order}
    ranked = sorted(order, key=lambda k: (unit_time[k], k))
    if cutoffs:
        val_start, test_start = cutoffs
        names = ["train" if unit_time[k] < val_start else
                 "val" if unit_time[k] < test_start else "test" for k in ranked]
    else:
        counts = _allocate(len(ranked), fractions)
        ordered = [unit_time[k] for k in ranked]
        first = _snap(counts[0], ordered)
        second = max(first, _snap(counts[0] + counts[1], ordered))
        names = ["train" if i < first else "val" if i < second else "test"
                 for i in range(len(ranked))]
    starts: dict[str, float] = {}
    for key, name in zip(ranked, names):
        starts.setdefault(name, unit_time[key])
    out = np.empty(len(keys), dtype=object)
    for key, name in zip(ranked, names):
        following = SPLITS[SPLITS.index(name) + 1:]
        boundary = min((starts[s] for s in following if s in starts), default=np.inf)
        in_gap = embargo > 0 and unit_time[key] >= boundary - embargo
        out[units[key]] = "" if in_gap else name
    return out
