"""Near-copy detection calibrated on the user's own images: pure functions, no file I/O.

One fixed cosine threshold on backbone embeddings cannot tell copies from distinct images
on every data set: on 8x8 digits and on synthetic textures a JPEG or cropped copy sits at
cosine 0.6-0.94 to its original while distinct images sit at 0.92. So the detector:

1. makes synthetic near copies of a sample of the user's images
   (:func:`pipeline.modality.image.signals.make_copies`: JPEG quality 50-80, 10-25 % smaller, a few
   pixels cropped, brightness +-5-10 %, and all four combined);
2. measures, per *signal* (the backbone embedding, and pixel-space signals that do not
   depend on the backbone, :mod:`pipeline.modality.image.signals`: thumbnails, phash,
   and for small images, where a one-pixel crop moves everything, the aligned views:
   the best match over crop and downscale views), how similar each copy is to its
   original and how similar each image is to its nearest distinct neighbour;
3. picks one threshold per signal (:func:`calibrate`): a pair is a near copy when *any*
   signal reaches its threshold (an OR rule, so that each signal's search stays the
   existing linear-memory neighbour search of :mod:`pipeline.dataquality.quality`), the thresholds
   jointly maximising the recall on the synthetic copies under a false-match budget, and
   records the estimated recall (per copy kind) and false-match rate. When no setting
   reaches ``min_recall`` within the budget the result says so (``separable`` false).

Every signal is a matrix of L2-normalised rows compared by cosine similarity, so
:func:`pipeline.dataquality.quality.neighbours` and
:func:`pipeline.dataquality.quality.similar_pairs` serve
them, except the views signal ((N, V, D)), which :func:`pair_similarity`,
:func:`view_neighbours` and :func:`similar_view_pairs` compare. The embed stage computes
the signals (pipeline.modality.image.signals), so an edit here reruns clean and split, not embed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.dataquality.quality import cell_centroids, near_duplicate_clusters, neighbours, top_k
from pipeline.modality.image.signals import CopyModel, Signal

SIM_DECIMALS = 6  # similarities are calibrated to this many decimals


def pair_similarity(x: Signal, y: Signal, a: np.ndarray | Sequence[int],
                    b: np.ndarray | Sequence[int], *, chunk: int = 4096) -> np.ndarray:
    """(P,) similarity of the pairs (``x[a[p]]``, ``y[b[p]]``) in one signal.

    A matrix signal ((N, D) rows) gives the cosine similarity; a views signal
    ((N, V, D), :func:`aligned_views`) the best cosine of either image's views against
    the other's whole view (view 0). Pairs are gathered in chunks (linear memory).
    """
    if isinstance(x, CopyModel) and isinstance(y, CopyModel):
        return x.similarity(y, a, b, chunk=chunk)
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), "one kind of signal"
    rows_x, rows_y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.empty(len(rows_x), np.float32)
    for s in range(0, len(rows_x), chunk):
        u, w = x[rows_x[s:s + chunk]], y[rows_y[s:s + chunk]]
        out[s:s + chunk] = (np.einsum("pd,pd->p", u, w) if x.ndim == 2 else np.maximum(
            np.einsum("pvd,pd->pv", u, w[:, 0]).max(1),
            np.einsum("pvd,pd->pv", w, u[:, 0]).max(1)))
    return out


def _view_cell_candidates(views: np.ndarray, *, wide: int, probes: int, seed: int
                          ) -> np.ndarray:
    """(N, wide) candidates of :func:`view_neighbours` above ``exact_max`` images: about
    sqrt(N) k-means cells of the whole views; each image is compared with the members of
    the cell nearest to each of its views and of the ``probes`` cells nearest to its
    whole view (a cropped copy's whole view sits near one of the original's views, not
    necessarily near its whole view), ranked by its best view. The work goes cell by cell
    (one matrix product per cell and chunk of the images that look into it), and each
    image keeps a running best ``wide``: memory linear in N. Rows with too few
    candidates repeat the last one (or the row itself)."""
    import torch

    n, v, d = views.shape
    whole = np.ascontiguousarray(views[:, 0])
    centroids = cell_centroids(whole, seed=seed)
    cells = len(centroids)
    probes = min(probes, cells)
    sq = (centroids ** 2).sum(1)
    # (N, V + probes): the cell nearest to each view (the whole view's first: the image's
    # home cell), then the probes nearest to the whole view
    looks = np.empty((n, v + probes), dtype=np.int64)
    for start in range(0, n, 1024):
        dist = sq - 2 * (views[start:start + 1024] @ centroids.T)  # (c, V, cells)
        looks[start:start + 1024, :v] = dist.argmin(2)
        looks[start:start + 1024, v:] = top_k(-dist[:, 0], probes)[0]
    home = looks[:, 0]
    by_home = np.argsort(home, kind="stable")
    member_bounds = np.searchsorted(home[by_home], np.arange(cells + 1))
    # every distinct (cell, image) pair, grouped by cell
    key = np.unique((looks * n + np.arange(n)[:, None]).ravel())
    pair_cell, pair_row = key // n, key % n
    pair_bounds = np.searchsorted(pair_cell, np.arange(cells + 1))
    best_index = np.repeat(np.arange(n)[:, None], wide, axis=1)
    best_sims = np.full((n, wide), -np.inf, dtype=np.float32)
    flat = torch.from_numpy(views.reshape(n, v * d))
    for cell in range(cells):
        members = by_home[member_bounds[cell]:member_bounds[cell + 1]]
        if len(members) == 0:
            continue
        reference = torch.from_numpy(whole[members]).T  # (D, m)
        looking = pair_row[pair_bounds[cell]:pair_bounds[cell + 1]]
        chunk = max(1, (1 << 24) // (v * len(members)))
        for s in range(0, len(looking), chunk):
            rows = looking[s:s + chunk]
            block = (flat[rows].reshape(-1, d) @ reference).reshape(len(rows), v, -1)
            block = block.amax(1)  # (rows, m): each image's best view against each member
            block[torch.from_numpy(rows[:, None] == members[None, :])] = -torch.inf
            top_sims, top = torch.topk(block, min(wide, len(members)), dim=1)
            merged_sims = np.concatenate([best_sims[rows], top_sims.numpy()], 1)
            merged_index = np.concatenate([best_index[rows], members[top.numpy()]], 1)
            keep, best_sims[rows] = top_k(merged_sims, wide)
            best_index[rows] = np.take_along_axis(merged_index, keep, 1)
    found = np.isfinite(best_sims).sum(1)  # best first, so the found ones lead each row
    last = np.where(found > 0, best_index[np.arange(n), np.maximum(found - 1, 0)], np.arange(n))
    short = np.arange(wide)[None, :] >= found[:, None]
    best_index[short] = np.broadcast_to(last[:, None], best_index.shape)[short]
    return best_index


def _view_candidates(views: np.ndarray, *, k: int, exact_max: int, probes: int, seed: int
                     ) -> np.ndarray:
    """(N, 2k + 8) candidates of each image (see :func:`view_neighbours`), unranked."""
    n, v, d = views.shape
    whole = np.ascontiguousarray(views[:, 0])
    wide = min(2 * k + 8, max(n - 1, 0))  # candidates, rescored both ways round
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64)
    if n > exact_max:
        return _view_cell_candidates(views, wide=wide, probes=probes, seed=seed)
    index = np.zeros((n, wide), dtype=np.int64)
    chunk = max(1, (1 << 24) // (n * v))
    for start in range(0, n, chunk):
        part = views[start:start + chunk]
        block = (part.reshape(-1, d) @ whole.T).reshape(len(part), v, n).max(1)
        rows = np.arange(len(part))
        block[rows, start + rows] = -np.inf  # not its own neighbour
        index[start:start + chunk] = top_k(block, wide)[0]
    return index


def _best_rescored(signal: Signal, index: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The candidates ``index`` scored by :func:`pair_similarity` in ``signal``, the best k
    of each row, best first (a row's padding, itself, scores 0)."""
    n = len(index)
    sims = pair_similarity(signal, signal, np.repeat(np.arange(n), index.shape[1]),
                           index.ravel()).reshape(index.shape)
    sims[index == np.arange(n)[:, None]] = 0.0  # padding (itself) matches nothing
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(sims, order, 1)


def view_neighbours(views: np.ndarray, *, k: int, exact_max: int, probes: int,
                    seed: int = 0, candidates: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pipeline.dataquality.quality.neighbours` for a views signal ((N, V, D)).

    Up to ``exact_max`` images, each image's candidates are the ``2k + 8`` images whose
    whole view best matches any of its views (chunks of (c, V, N) similarities: linear
    memory); above it, the same among the images whose whole view lies in the k-means
    cell nearest to one of its views or among the ``probes`` cells nearest to its whole
    view (:func:`_view_cell_candidates`). Either way the candidates are then scored by
    :func:`pair_similarity` (both ways round) and the best k kept, best first
    (``candidates``: those candidates when the caller has them).
    """
    k = min(k, max(len(views) - 1, 0))
    index = candidates if candidates is not None else _view_candidates(
        views, k=k, exact_max=exact_max, probes=probes, seed=seed)
    return _best_rescored(views, index, k)


def copy_model_neighbours(model: CopyModel, *, k: int, exact_max: int, probes: int,
                          seed: int = 0, candidates: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pipeline.dataquality.quality.neighbours` for the copy model: the aligned views'
    candidates (:func:`view_neighbours`) rescored by the model. Without a tiny image,
    every row's neighbours are itself at similarity 0 (no work)."""
    n = len(model)
    k = min(k, max(n - 1, 0))
    if not model.any():
        return np.repeat(np.arange(n)[:, None], k, 1), np.zeros((n, k), np.float32)
    index = candidates if candidates is not None else _view_candidates(
        model.views, k=k, exact_max=exact_max, probes=probes, seed=seed)
    return _best_rescored(model, index, k)


def copy_similarities(signals: Sequence[Signal], copies: Sequence[Signal],
                      source: np.ndarray) -> np.ndarray:
    """(M, S) similarity of each copy to its original, per signal (:func:`pair_similarity`).

    Args:
        signals: S signals of the originals: (N, D_s) unit rows or (N, V, D_s) views.
        copies: S signals of the copies, (M, ...) each, in the same signal order.
        source: (M,) row of each copy's original.
    """
    return np.stack([pair_similarity(c, s, np.arange(len(source)), source)
                     for s, c in zip(signals, copies)], axis=1).astype(np.float32)


Search = tuple[np.ndarray, np.ndarray]  # (N, k) neighbour indices, (N, k) similarities


def search(signals: Sequence[Signal], *, k: int, exact_max: int = 20000,
           probes: int = 8, seed: int = 0) -> list[Search]:
    """Each signal's k nearest neighbours (:func:`pipeline.dataquality.quality.neighbours`, or
    :func:`view_neighbours` for a views signal, :func:`copy_model_neighbours` for the copy
    model; linear memory), searched once and shared by the calibration and the
    clustering. The aligned views' candidates are found once and shared with the copy
    model."""
    wide: dict[int, np.ndarray] = {}  # id of a views array -> its candidates

    def candidates(views: np.ndarray) -> np.ndarray:
        if id(views) not in wide:
            wide[id(views)] = _view_candidates(views, k=min(k, max(len(views) - 1, 0)),
                                               exact_max=exact_max, probes=probes, seed=seed)
        return wide[id(views)]

    out = []
    options = {"k": k, "exact_max": exact_max, "probes": probes, "seed": seed}
    for sig in signals:
        if isinstance(sig, CopyModel):
            out.append(copy_model_neighbours(sig, **options, candidates=candidates(sig.views)))
        elif sig.ndim == 3:
            out.append(view_neighbours(sig, **options, candidates=candidates(sig)))
        else:
            out.append(neighbours(sig, **options))
    return out


def distinct_similarities(signals: Sequence[Signal], *, rows: np.ndarray | None = None,
                          hashes: Sequence[str | None] | None = None, k: int = 1,
                          exact_max: int = 20000, probes: int = 8, seed: int = 0,
                          searches: Sequence[Search] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Every signal's similarities of the pairs (image, one of its k nearest neighbours).

    The neighbours come from each signal's own search
    (:func:`pipeline.dataquality.quality.neighbours`, linear memory); every candidate pair
    is then scored in every signal, so the OR rule of :func:`calibrate` sees what each
    signal would say about the pairs any signal finds.
    Pixel-identical pairs (equal ``hashes``) are left out: they are exact duplicates,
    found by their hash, not distinct images.

    Args:
        signals: S matrices (N, D_s), L2-normalised rows.
        rows: (R,) the images whose neighbours to score (default all); neighbours are
            searched among all N.
        hashes: (N,) pixel hash per image (None where not decoded), or None.
        searches: each signal's :func:`search` with at least ``k`` neighbours, when the
            caller has it already (else searched here).
    Returns:
        (P, S) float32 similarities and (P,) int64 owner (the image of ``rows`` each pair
        belongs to), pairs unique per owner.
    """
    n = len(signals[0])
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if searches is None:
        searches = search(signals, k=k, exact_max=exact_max, probes=probes, seed=seed)
    found: list[np.ndarray] = []
    for index, _ in searches:
        index = index[:, :k]
        found.append(np.stack([np.repeat(rows, index.shape[1]), index[rows].ravel()], 1))
    pairs = np.unique(np.concatenate(found), axis=0)  # (P, 2) owner, neighbour
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    if hashes is not None:
        same = np.array([hashes[a] is not None and hashes[a] == hashes[b] for a, b in pairs],
                        dtype=bool).reshape(-1)
        pairs = pairs[~same]
    sims = np.stack([pair_similarity(s, s, pairs[:, 0], pairs[:, 1]) for s in signals],
                    axis=1).astype(np.float32)
    return sims.reshape(len(pairs), len(signals)), pairs[:, 0].astype(np.int64)


# --------------------------------------------------------------------------- calibration


MIN_RECALL = 0.9  # below this estimated recall copies (of a kind) will be missed

@dataclass(frozen=True)
class Calibration:
    """Per-signal thresholds of the OR rule and their estimated error rates."""

    signals: tuple[str, ...]
    thresholds: tuple[float, ...]  # cosine similarity per signal; inf = signal not used
    recall: float  # share of the synthetic copies the rule finds
    false_match_rate: float  # share of images the rule links to a distinct image
    separable: bool  # recall >= min_recall within the false-match budget
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    copy_share: float = 0.0  # estimated share of the user's images with a near copy
    note: str = ""

    def fires(self, sims: np.ndarray) -> np.ndarray:
        """(P,) bool: pairs, given as (P, S) similarities, that the rule calls copies."""
        above = np.asarray(sims) >= np.asarray(self.thresholds, dtype=np.float64)
        return np.asarray(above.any(axis=1), dtype=bool)

    def missed_kinds(self, min_recall: float | None = None) -> dict[str, float]:
        """The copy kinds whose estimated recall is below ``min_recall`` (default
        :data:`MIN_RECALL`): copies made that way will mostly be missed."""
        floor = MIN_RECALL if min_recall is None else min_recall
        return {kind: r for kind, r in self.recall_by_kind.items() if r < floor}

    def metrics(self, prefix: str = "near_duplicate") -> dict[str, float | bool | str]:
        """Flat numbers for metrics/*.json (``dvc metrics show``)."""
        out: dict[str, float | bool | str] = {}
        for name, t in zip(self.signals, self.thresholds):
            out[f"{prefix}_threshold_{name}"] = float(t) if np.isfinite(t) else "off"
        out[f"{prefix}_estimated_recall"] = round(self.recall, 4)
        out[f"{prefix}_estimated_false_match_rate"] = round(self.false_match_rate, 5)
        out[f"{prefix}_separable"] = self.separable
        for kind, r in self.recall_by_kind.items():
            out[f"{prefix}_estimated_recall_{kind}"] = round(r, 4)
        if self.recall_by_kind:  # a calibrated rule
            out[f"{prefix}_missed_kinds"] = ", ".join(self.missed_kinds()) or "none"
        return out

    def summary(self) -> str:
        """One line for the log: thresholds, estimated recall and false-match rate."""
        rule = " or ".join(f"{n} >= {t:.4f}" for n, t in zip(self.signals, self.thresholds)
                           if np.isfinite(t)) or "nothing"
        text = (f"near copy when {rule}: estimated recall {self.recall:.3f} on synthetic "
                f"copies, false-match rate {self.false_match_rate:.4f}, share with a "
                f"near copy already {self.copy_share:.3f}")
        return text + (f" ({self.note})" if self.note else "")


def _candidates(values: np.ndarray, *, limit: int) -> np.ndarray:
    """Thresholds just above each of the ``limit`` largest distinct values, plus 'off'."""
    top = np.unique(values)[::-1][:limit]
    return np.concatenate([[np.inf], np.nextafter(top.astype(np.float64), np.inf)])


def _subsets(copy_sims: np.ndarray, n_signals: int) -> list[list[int]]:
    """Every non-empty subset of the signal columns worth trying: a signal on which no
    copy scores above 0 (the copy model without tiny images) cannot find one, so its
    subsets are left out (unless no signal is usable)."""
    usable = [j for j in range(n_signals) if len(copy_sims) and copy_sims[:, j].max() > 0]
    return [list(c) for r in range(1, len(usable or range(n_signals)) + 1)
            for c in itertools.combinations(usable or range(n_signals), r)]


def _shared_grids(copy_sims: np.ndarray, pairs: np.ndarray, subsets: list[list[int]],
                  owner: np.ndarray | None, *, limit: int, floor_recall: float,
                  allowance: float) -> tuple[float, list[Grid]]:
    """Each subset's :func:`_grid` and the one share of images with a real copy that
    :func:`_share` estimates from all of them (it belongs to the data)."""
    owners, n_owners = _owners(owner, len(pairs))
    computed = [_grid(copy_sims[:, c], pairs[:, c], owners, n_owners, limit=limit)
                for c in subsets]
    share = _share([g[1:] for g in computed], n_owners, floor_recall=floor_recall,
                   allowance=allowance)
    return share, computed


def calibrate(copy_sims: np.ndarray, distinct_sims: np.ndarray, *,
              signals: Sequence[str], owner: np.ndarray | None = None,
              kinds: np.ndarray | None = None, max_false_rate: float = 0.002,
              min_recall: float = MIN_RECALL, limit: int = 200, floor_recall: float = 0.75,
              allowance: float = 1.0, shared_share: bool = True) -> Calibration:
    """The best OR rule over every subset of the signals (see :func:`calibrate_rule`).

    Each non-empty subset of signals is calibrated on its own (its own estimate of the
    share of real copies: a signal that cannot separate copies makes that estimate and
    the joint grid noisy, which is why the subsets are tried one by one); the subset with
    the highest estimated recall wins, ties going to fewer signals, then fewer false
    matches. Signals left out get an infinite threshold, and so does a signal on which
    no copy scores above 0 (the copy model on images larger than ``TINY_SIDE``); its
    subsets are not tried. Arguments as :func:`calibrate_rule`; with ``shared_share``
    (the default) the share of images that already have a copy is estimated once, the
    least over every subset with usable settings (it belongs to the data, not to the
    signals: a weak signal whose only settings that find most copies fire on nearly
    every image would otherwise claim every pair), instead of per subset.

    The defaults (the share from settings that find 75 % of the copies, counts one
    Poisson deviation high, shared) were measured on planted copies in real images
    (``benchmarks/calibrate_copies.py``, README); with ``floor_recall=0.25,
    allowance=0.5, shared_share=False`` the estimate is the one used before 2026-12.
    """
    # to 1e-6: float32 noise must not order copies that are equal (a crop copy and a
    # planted one both at 1.0 +- 1e-7 would otherwise split the strictest thresholds)
    copy_sims = np.round(np.asarray(copy_sims, dtype=np.float64), SIM_DECIMALS)
    pairs = np.round(np.asarray(distinct_sims, dtype=np.float64), SIM_DECIMALS)
    best: Calibration | None = None
    best_key: tuple[float, int, float] | None = None
    subsets = _subsets(copy_sims, len(signals))
    share = None  # shared_share: the share of real copies is the data's, not a subset's
    grids: list[Grid | None] = [None] * len(subsets)  # each computed once when shared
    if shared_share:
        share, computed = _shared_grids(copy_sims, pairs, subsets, owner, limit=limit,
                                        floor_recall=floor_recall, allowance=allowance)
        grids = list(computed)
    for cols, grid in zip(subsets, grids):
        r = len(cols)
        cal = calibrate_rule(copy_sims[:, cols], pairs[:, cols],
                             signals=[signals[j] for j in cols], owner=owner,
                             kinds=kinds, max_false_rate=max_false_rate,
                             min_recall=min_recall, limit=limit,
                             floor_recall=floor_recall, allowance=allowance,
                             share=share, grid=grid)
        key = (round(cal.recall, 6), -r, -cal.false_match_rate)
        if best_key is None or key > best_key:
            thresholds = [np.inf] * len(signals)
            for j, t in zip(cols, cal.thresholds):
                thresholds[j] = t
            best_key = key
            best = replace(cal, signals=tuple(signals), thresholds=tuple(thresholds))
    assert best is not None
    return _explained(best, signals, min_recall=min_recall, max_false_rate=max_false_rate)


def _explained(best: Calibration, signals: Sequence[str], *, min_recall: float,
               max_false_rate: float) -> Calibration:
    """``best`` with its note: CANNOT SEPARATE (naming every signal tried, not only the
    best subset's) and the copy kinds it misses, even where it finds most copies."""
    notes = []
    if not best.separable:
        notes.append(f"CANNOT SEPARATE: no thresholds on {', '.join(signals)} (alone or "
                     f"combined) find {min_recall:.0%} of the synthetic copies at a "
                     f"false-match rate <= {max_false_rate:g}; near copies will be missed")
    missed = best.missed_kinds(min_recall)
    if missed:
        notes.append("copies made by " + ", ".join(
            f"{kind} (estimated recall {r:.2f})" for kind, r in missed.items())
            + " will mostly be missed")
    return replace(best, note="; ".join(notes)) if notes else best


PLAUSIBLE_SHARE = 0.5  # at most this share of the images already has a near copy
LOW_FLOOR = 0.25  # the recall of the settings that estimate it when the usual ones can't
_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)  # popcount


def _grid_rates(copy_sims: np.ndarray, pairs: np.ndarray, owner: np.ndarray, n_owners: int,
                grids: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Recall on the copies and share of owners with a firing pair, for every setting of
    the joint grid (``itertools.product`` order).

    A setting fires on a copy, or on an owner, when any signal fires on it, so each
    signal's candidates become bit rows (copies, then owners) that are OR-ed: the last
    signal's whole grid at once for each setting of the others.
    """
    m = len(copy_sims)
    rows = []
    for j, grid in enumerate(grids):
        copy_fire = copy_sims[:, j][None, :] >= grid[:, None]  # (G_j, M)
        owner_fire = np.zeros((len(grid), n_owners), dtype=bool)  # (G_j, owners)
        for g, t in enumerate(grid):
            owner_fire[g, owner[pairs[:, j] >= t]] = True
        rows.append((np.packbits(copy_fire, axis=1), np.packbits(owner_fire, axis=1)))
    last_copy, last_owner = rows[-1]
    recall, fired = [], []
    for combo in itertools.product(*(range(len(g)) for g in grids[:-1])):
        acc_copy, acc_owner = np.zeros_like(last_copy[0]), np.zeros_like(last_owner[0])
        for j, g in enumerate(combo):
            acc_copy |= rows[j][0][g]
            acc_owner |= rows[j][1][g]
        recall.append(_BITS[last_copy | acc_copy].sum(1) / max(m, 1))
        fired.append(_BITS[last_owner | acc_owner].sum(1) / n_owners)
    return np.concatenate(recall), np.concatenate(fired)


def _owners(owner: np.ndarray | None, n_pairs: int) -> tuple[np.ndarray, int]:
    """Each pair's owner as 0..n_owners - 1 (default: one pair per owner), and n_owners."""
    owner = np.arange(n_pairs) if owner is None else np.asarray(owner)
    _, owner = np.unique(owner, return_inverse=True)
    return owner, max(1, int(owner.max()) + 1 if len(owner) else 1)


Grid = tuple[list[np.ndarray], np.ndarray, np.ndarray]  # :func:`_grid`'s result


def _grid(copy_sims: np.ndarray, pairs: np.ndarray, owner: np.ndarray, n_owners: int, *,
          limit: int) -> Grid:
    """The joint grid of candidate thresholds (one list per signal), and the recall and
    share of firing owners of each of its settings (:func:`_grid_rates`)."""
    s = copy_sims.shape[1]
    limit = min(limit, int(50_000 ** (1 / s)))  # keep the joint grid near 50,000 settings
    grids = [_candidates(pairs[:, j], limit=limit) for j in range(s)]
    return (grids, *_grid_rates(copy_sims, pairs, owner, n_owners, grids))


def _share(rates: Sequence[tuple[np.ndarray, np.ndarray]], n_owners: int, *,
           floor_recall: float, allowance: float) -> float:
    """The estimated share of images that already have a copy, from the (recall, share
    of firing owners) of every setting of one or more grids (:func:`_grid`): the least
    ratio of firing owners to recall over the settings with recall >= ``floor_recall``
    (0 when there are none), each count ``c`` taken ``allowance`` Poisson deviations high
    (``c + allowance * sqrt(c)``): the minimum over many noisy ratios would otherwise
    fall below the truth when a few dozen real copies exist. Where that says more than
    ``PLAUSIBLE_SHARE`` of the images have a copy (signals that find that many copies
    only by linking nearly every image), the settings with recall >= ``LOW_FLOOR``
    estimate it instead, and the estimate is never above ``PLAUSIBLE_SHARE``: signals
    that cannot tell copies from distinct images would otherwise call every image a copy
    of its neighbour, at an estimated false-match rate of 0."""
    estimate = None
    for floor in sorted({floor_recall, min(floor_recall, LOW_FLOOR)}, reverse=True):
        ratios = []
        for recall, fired in rates:
            usable = recall >= floor
            count = fired[usable] * n_owners
            ratios.extend((count + allowance * np.sqrt(count)) / n_owners / recall[usable])
        if ratios:
            estimate = float(np.min(ratios))
            if estimate <= PLAUSIBLE_SHARE:
                break
    return 0.0 if estimate is None else min(estimate, PLAUSIBLE_SHARE)


def _grid_search(copy_sims: np.ndarray, pairs: np.ndarray, owner: np.ndarray,
                 n_owners: int, *, limit: int, floor_recall: float, max_false_rate: float,
                 allowance: float, share: float | None, grid: Grid | None = None
                 ) -> tuple[list[float], float]:
    """The joint threshold search of :func:`calibrate_rule`: the chosen threshold per
    signal (each moved to the middle of its gap) and the estimated share of images that
    already have a real copy (``share`` when given; ``grid`` when computed already)."""
    grids, recall, fired = grid or _grid(copy_sims, pairs, owner, n_owners, limit=limit)
    combos = list(itertools.product(*(range(len(g)) for g in grids)))
    if share is None:
        share = _share([(recall, fired)], n_owners, floor_recall=floor_recall,
                       allowance=allowance)
    false_rate = np.maximum(0.0, fired - share * recall)
    ok = np.flatnonzero(false_rate <= max_false_rate)
    # most recall, then fewest matches, then the strictest (latest in product order)
    best = ok[np.lexsort((ok, -fired[ok], recall[ok]))[-1]] if len(ok) else 0
    thresholds = []
    for j, g in enumerate(combos[best]):
        t = grids[j][g]
        if np.isfinite(t):
            pooled = np.concatenate([copy_sims[:, j], pairs[:, j]])
            below, above = pairs[:, j][pairs[:, j] < t], pooled[pooled >= t]
            if len(below) and len(above):
                t = (below.max() + above.min()) / 2
        thresholds.append(float(t))
    return thresholds, share


def calibrate_rule(copy_sims: np.ndarray, distinct_sims: np.ndarray, *,
                   signals: Sequence[str], owner: np.ndarray | None = None,
                   kinds: np.ndarray | None = None, max_false_rate: float = 0.002,
                   min_recall: float = MIN_RECALL, limit: int = 200, floor_recall: float = 0.75,
                   allowance: float = 1.0, share: float | None = None,
                   grid: Grid | None = None) -> Calibration:
    """Pick one threshold per signal for the rule "copy when any signal reaches its own".

    Searches the joint grid of thresholds just above the ``limit`` largest
    nearest-neighbour similarities of each signal (and "off"), keeps the settings whose
    estimated false-match rate is at most ``max_false_rate``, and among them takes the
    highest recall on the synthetic copies (ties: fewer matches, then the strictest).
    Each chosen threshold is then moved to the middle of the gap between the pair just
    below it and the next pair above it, so that real copies a little less similar than
    the synthetic ones still pass.

    The user's images may already hold near copies, so the nearest-neighbour pairs are
    a mixture: a share ``pi`` of images with a real copy (which fires at the synthetic
    copies' rate ``r(t)``) and distinct pairs, so the share of images with a firing pair
    is ``n(t) = pi * r(t) + false(t)``. :func:`_share` estimates ``pi`` (the least
    ``n(t) / r(t)`` over settings with ``r(t) >= floor_recall``, counts taken a little
    high), and the false-match rate is ``n(t) - pi * r(t)``: without copies in the data,
    the plain share of images linked to their nearest distinct neighbour.

    Args:
        copy_sims: (M, S) similarity of each synthetic copy to its original
            (:func:`copy_similarities`).
        distinct_sims: (P, S) similarities of image / nearest-neighbour pairs, exact
            duplicates left out (:func:`distinct_similarities`).
        signals: S signal names, e.g. ("embedding", "thumbnail").
        owner: (P,) image each pair belongs to; rates are shares of these images
            (default: one pair per image).
        kinds: (M,) copy kind of each row of ``copy_sims``, for the per-kind recall.
        max_false_rate: the largest acceptable share of images linked to a distinct one.
        min_recall: below this estimated recall the signals "cannot separate".
        limit: candidate thresholds per signal.
        floor_recall: the settings that estimate the share of real copies.
        allowance: Poisson deviations added to each count of firing images in that
            estimate (:func:`_share`).
        share: the share of images that already have a copy, when estimated already.
        grid: :func:`_grid` of these similarities, when computed already.
    """
    copy_sims = np.asarray(copy_sims, dtype=np.float64)
    pairs = np.asarray(distinct_sims, dtype=np.float64)
    s = copy_sims.shape[1]
    if len(signals) != s or pairs.shape[1] != s:
        raise ValueError(f"{len(signals)} signal names for {s} and {pairs.shape[1]} "
                         "columns of similarities")
    if len(copy_sims) == 0:
        raise ValueError("calibrate needs at least one synthetic copy")
    owner, n_owners = _owners(owner, len(pairs))
    thresholds, share = _grid_search(copy_sims, pairs, owner, n_owners, limit=limit,
                                     floor_recall=floor_recall,
                                     max_false_rate=max_false_rate, allowance=allowance,
                                     share=share, grid=grid)
    est_recall, est_false, by_kind = _rates(copy_sims, pairs, np.asarray(thresholds), owner,
                                            n_owners, share, kinds)
    # the "cannot separate" note is :func:`calibrate`'s, which names every signal tried
    return Calibration(tuple(signals), tuple(thresholds), est_recall, est_false,
                       est_recall >= min_recall, by_kind, share)


def _rates(copy_sims: np.ndarray, pairs: np.ndarray, cal: np.ndarray, owner: np.ndarray,
           n_owners: int, share: float, kinds: np.ndarray | None
           ) -> tuple[float, float, dict[str, float]]:
    """The estimated recall, false-match rate and recall per copy kind of thresholds
    ``cal`` (the rule fires when any signal reaches its own)."""
    hit = np.asarray((copy_sims >= cal).any(axis=1), dtype=bool)
    fire = np.asarray((pairs >= cal).any(axis=1), dtype=bool)
    n_fired = np.bincount(owner[fire], minlength=n_owners).astype(bool).sum() / n_owners
    est_recall = float(hit.mean())
    est_false = float(max(0.0, n_fired - share * est_recall))
    by_kind = ({str(k): float(hit[kinds == k].mean()) for k in dict.fromkeys(kinds)}
               if kinds is not None else {})
    return est_recall, est_false, by_kind


# --------------------------------------------------------------------------- detection


def near_copy_clusters(signals: Sequence[Signal], calibration: Calibration, *, k: int,
                       exact_max: int, probes: int, order: Sequence[str], valid: np.ndarray,
                       seed: int = 0, searches: Sequence[Search] | None = None
                       ) -> np.ndarray:
    """Near-copy clusters under a calibrated OR rule (connected components, linear memory).

    Each used signal's k-nearest-neighbour search (:func:`pipeline.dataquality.quality.neighbours`)
    yields its candidate pairs; a pair links when its similarity in that signal reaches
    that signal's threshold. The per-signal lists are concatenated, shifted by their
    thresholds, and linked at 0 by :func:`pipeline.dataquality.quality.near_duplicate_clusters`.

    ``searches`` (each signal's :func:`search`, ``k`` neighbours) saves the searches
    when the caller has them.

    Returns:
        (N,) object array: the cluster's key (smallest member of ``order``) or None.
    """
    index_parts, margin_parts = [], []
    for j, (sig, t) in enumerate(zip(signals, calibration.thresholds)):
        if not np.isfinite(t):
            continue
        index, sims = (searches[j] if searches is not None else
                       search([sig], k=k, exact_max=exact_max, probes=probes, seed=seed)[0])
        index_parts.append(index)
        margin_parts.append(sims - np.float32(t))  # >= 0 where this signal fires
    if not index_parts:
        return np.full(len(order), None, dtype=object)
    return near_duplicate_clusters(np.concatenate(index_parts, 1),
                                   np.concatenate(margin_parts, 1), threshold=0.0,
                                   order=order, valid=valid)


def copy_pairs(queries: Sequence[Signal], reference: Sequence[Signal],
               calibration: Calibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, reference) pair that the calibrated OR rule calls a copy.

    For the split stage's leakage audit (val/test rows as queries, train rows as
    reference): each used signal's :func:`pipeline.dataquality.quality.similar_pairs` at its own
    threshold (:func:`similar_view_pairs` for a views signal,
    :func:`similar_copy_model_pairs` for the copy model), united. Linear memory in Q + M.

    Returns:
        (P,) int64 query rows, (P,) int64 reference rows, (P,) int64 index of the signal
        that found the pair first (in ``calibration.signals`` order), sorted by query.
    """
    from pipeline.dataquality.quality import similar_pairs

    found: dict[tuple[int, int], int] = {}
    for j, (q, r, t) in enumerate(zip(queries, reference, calibration.thresholds)):
        if not np.isfinite(t):
            continue
        if isinstance(q, CopyModel) and isinstance(r, CopyModel):
            rows, cols = similar_copy_model_pairs(q, r, threshold=float(t))
        else:
            assert isinstance(q, np.ndarray) and isinstance(r, np.ndarray)
            rows, cols = (similar_view_pairs(q, r, threshold=float(t)) if q.ndim == 3 else
                          similar_pairs(q, r, threshold=float(t))[:2])
        for a, b in zip(rows.tolist(), cols.tolist()):
            found.setdefault((a, b), j)
    keys = sorted(found)
    return (np.array([a for a, _ in keys], np.int64), np.array([b for _, b in keys], np.int64),
            np.array([found[key] for key in keys], np.int64))


VIEW_PAIRS_MAX = 5e9  # Q x M x V similarities: above it the views audit uses whole views


def _view_blocks(queries: np.ndarray, reference: np.ndarray
                 ) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (c, M) :func:`pair_similarity` of query rows ``start:start + c`` against
    every reference row) of a views signal, chunk by chunk (linear memory). Above
    ``VIEW_PAIRS_MAX`` similarities only the whole views are compared."""
    q_n, v, d = queries.shape
    m = len(reference)
    ref_whole, ref_flat = np.ascontiguousarray(reference[:, 0]), reference.reshape(-1, d)
    if q_n * m * v > VIEW_PAIRS_MAX:
        chunk = max(1, (1 << 24) // max(1, m))
        for start in range(0, q_n, chunk):
            yield start, queries[start:start + chunk, 0] @ ref_whole.T
        return
    chunk = max(1, (1 << 24) // max(1, m * v))
    for start in range(0, q_n, chunk):
        part = queries[start:start + chunk]
        mine = (part.reshape(-1, d) @ ref_whole.T).reshape(len(part), v, m).max(1)
        theirs = (ref_flat @ part[:, 0].T).reshape(m, v, len(part)).max(1).T
        yield start, np.maximum(mine, theirs)


def similar_view_pairs(queries: np.ndarray, reference: np.ndarray, *, threshold: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, reference) pair of a views signal ((Q, V, D), (M, V, D)) whose
    :func:`pair_similarity` reaches ``threshold``: exact, in chunks of (c, V, M)
    similarities (linear memory). Above ``VIEW_PAIRS_MAX`` similarities (tens of
    thousands of images each side) only the whole views are compared, which can miss a
    cropped copy of a tiny image; the audit's other signals still apply.

    Returns:
        (P,) int64 query rows and (P,) int64 reference rows, ordered by query row.
    """
    found_rows, found_cols = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start, block in _view_blocks(queries, reference) if len(reference) else ():
        rows, cols = np.nonzero(block >= threshold)
        found_rows.append(rows + start)
        found_cols.append(cols)
    return (np.concatenate(found_rows).astype(np.int64),
            np.concatenate(found_cols).astype(np.int64))


def similar_copy_model_pairs(queries: CopyModel, reference: CopyModel, *, threshold: float,
                             wide: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, reference) pair of tiny images among each query's ``wide`` best
    reference rows by the aligned views (:func:`_view_blocks`) whose copy-model
    similarity reaches ``threshold``; nothing when either side has no tiny image.

    Returns:
        (P,) int64 query rows and (P,) int64 reference rows, ordered by query row.
    """
    q_rows = np.flatnonzero(queries.packed[:, 0] > 0)
    r_rows = np.flatnonzero(reference.packed[:, 0] > 0)
    if not len(q_rows) or not len(r_rows):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    wide = min(wide, len(r_rows))
    index = np.zeros((len(q_rows), wide), np.int64)
    for start, block in _view_blocks(queries.views[q_rows], reference.views[r_rows]):
        index[start:start + len(block)] = top_k(block, wide)[0]
    a, b = np.repeat(q_rows, wide), r_rows[index.ravel()]
    hit = queries.similarity(reference, a, b) >= threshold
    return a[hit], b[hit]
