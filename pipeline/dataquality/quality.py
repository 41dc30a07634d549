"""Data-quality detectors: arrays in, masks and cluster ids out, no file I/O."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

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


def neighbours(embeddings: np.ndarray, *, k: int, exact_max: int, probes: int,
               seed: int = 0, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours of every row by cosine similarity, itself excluded.

    Up to ``exact_max`` rows the search is exact (every pair, in chunks). Above it, rows
    are grouped into about sqrt(N) k-means cells and each row is compared with the
    members of its ``probes`` nearest cells only (an inverted-file search): about
    ``probes / sqrt(N)`` of the pairs, with exact similarities for the pairs it compares.
    Near copies share or neighbour each other's cell, so they are found; a far
    neighbour outside the probed cells can be missed.

    Args:
        embeddings: (N, D) float32, L2-normalised rows (zero rows never match).
        chunk: rows per (chunk, N) block of the exact search; default keeps the block
            near 32 M similarities (128 MB).
    Returns:
        (N, k) int64 neighbour indices and (N, k) float32 similarities, best first.
        Memory is linear in N, never N x N. A row that has fewer than k candidates
        (only in the cell search, with tiny cells) is padded with itself at similarity 0.
    """
    n = len(embeddings)
    k = min(k, max(n - 1, 0))
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    if n > exact_max:
        return _cell_neighbours(embeddings, k=k, probes=probes, seed=seed)
    chunk = chunk or max(1, min(2048, (1 << 25) // n))
    index = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    for start, block in _similarity_blocks(embeddings, embeddings, chunk):  # (chunk, N)
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = -np.inf  # not its own neighbour
        index[start:start + chunk], sims[start:start + chunk] = top_k(block, k)
    return index, sims


def top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions and values of the k largest entries of each row, largest first."""
    top = np.argpartition(-block, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(block, top, axis=1)
    order = np.argsort(-top_sims, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sims, order, axis=1)


def cell_centroids(x: np.ndarray, *, seed: int) -> np.ndarray:
    """(about sqrt(N), D) float32 k-means centroids of the rows of ``x`` (fitted on a
    seeded sample of 32 rows per cell): the cells of the inverted-file searches."""
    from sklearn.cluster import KMeans

    n = len(x)
    cells = max(2, round(np.sqrt(n)))
    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(n, size=min(n, 32 * cells), replace=False))]
    # random init: k-means++ on float32 rows upcasts to float64 and costs minutes here
    return KMeans(cells, init="random", n_init=1, max_iter=10, random_state=seed).fit(
        sample).cluster_centers_.astype(np.float32)


def _cell_neighbours(x: np.ndarray, *, k: int, probes: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The inverted-file search of :func:`neighbours` (rows above ``exact_max``)."""
    import torch

    n = len(x)
    centroids = cell_centroids(x, seed=seed)  # (cells, D)
    cells = len(centroids)
    probes = min(probes, cells)
    # (N, probes) the cells nearest to each row, nearest first: the first is its home
    near_cells = np.empty((n, probes), dtype=np.int64)
    sq_norms = (centroids ** 2).sum(1)
    for start in range(0, n, 8192):
        dist = sq_norms - 2 * (x[start:start + 8192] @ centroids.T)  # squared distance - |x|^2
        near_cells[start:start + 8192] = top_k(-dist, probes)[0]
    home = near_cells[:, 0]
    by_home = np.argsort(home, kind="stable")
    member_bounds = np.searchsorted(home[by_home], np.arange(cells + 1))
    # every (row, probe slot) pair, grouped by the cell it probes
    probing = np.argsort(near_cells.ravel(), kind="stable")
    probe_bounds = np.searchsorted(near_cells.ravel()[probing], np.arange(cells + 1))
    # a row's position among its home cell's members, to keep it from matching itself
    rank_in_home = np.empty(n, dtype=np.int64)
    rank_in_home[by_home] = np.arange(n) - member_bounds[home[by_home]]
    cand_index = np.repeat(np.arange(n)[:, None], probes * k, axis=1)  # (N, probes * k)
    cand_sims = np.full((n, probes * k), -np.inf, dtype=np.float32)
    for cell in range(cells):
        members = by_home[member_bounds[cell]:member_bounds[cell + 1]]
        pairs = probing[probe_bounds[cell]:probe_bounds[cell + 1]]
        if len(members) == 0 or len(pairs) == 0:
            continue
        rows, slots = pairs // probes, pairs % probes
        # (rows probing the cell, its members); torch: its top-k is ~10x numpy's argpartition
        block = torch.from_numpy(x[rows]) @ torch.from_numpy(x[members]).T
        own = np.flatnonzero(slots == 0)  # rows whose home this is
        block[torch.from_numpy(own), torch.from_numpy(rank_in_home[rows[own]])] = -torch.inf
        best_sims, best = torch.topk(block, min(k, len(members)), dim=1)
        columns = slots[:, None] * k + np.arange(best.shape[1])
        cand_index[rows[:, None], columns] = members[best.numpy()]
        cand_sims[rows[:, None], columns] = best_sims.numpy()
    top, sims = top_k(cand_sims, k)
    index = np.take_along_axis(cand_index, top, axis=1)
    missing = ~np.isfinite(sims)
    sims[missing] = 0.0
    index[missing] = np.repeat(np.arange(n)[:, None], k, axis=1)[missing]
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
    """Link rows whose cosine similarity is at least ``threshold`` (connected components).

    Args:
        index, sims: (N, k) from :func:`neighbours`.
        order: (N,) sort keys; a cluster is named by its smallest member's key.
        valid: (N,) bool, rows with an embedding.
    Returns:
        (N,) object array: the cluster's key for rows in a cluster of two or more, else None.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(order)
    rows = np.repeat(np.arange(n), index.shape[1])
    cols = index.ravel()
    linked = (sims.ravel() >= threshold) & valid[rows] & valid[cols] & (rows != cols)
    graph = coo_matrix((np.ones(int(linked.sum()), dtype=np.int8),
                        (rows[linked], cols[linked])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    cluster = np.full(n, None, dtype=object)
    sizes = np.bincount(component, minlength=n)
    members: dict[int, list[int]] = {}
    for row in np.flatnonzero(sizes[component] > 1):
        members.setdefault(int(component[row]), []).append(int(row))
    for group in members.values():
        name = min(order[i] for i in group)
        for i in group:
            cluster[i] = name
    return cluster


def out_of_fold_probabilities(embeddings: np.ndarray, y: np.ndarray, *, folds: int,
                              seed: int, probe: str, dims: int) -> np.ndarray:
    """(N, C) predicted probabilities of a linear probe, each row from the fold that held it out.

    ``probe``: ``logistic`` is a LogisticRegression on the embeddings as they are (its
    iterative fit costs minutes at 100,000 rows and 100 classes); ``lda`` projects them on
    their top ``dims`` principal components (unsupervised, fitted once on all rows) and
    fits a shrinkage linear discriminant analysis in closed form (seconds at that size).

    Args:
        embeddings: (N, D) float32 features.
        y: (N,) int class indices 0..C-1; every class needs at least ``folds`` rows.
    """
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    if probe == "logistic":
        return cross_val_predict(LogisticRegression(max_iter=1000, C=1.0), embeddings, y,
                                 method="predict_proba", cv=cv)
    if probe != "lda":
        raise ValueError(f"unknown probe {probe!r}; expected logistic or lda")
    features = embeddings
    components = min(dims, embeddings.shape[1], len(embeddings) - 1)
    if components < embeddings.shape[1]:
        # covariance_eigh: exact and deterministic, one (D, D) covariance for any N
        features = PCA(components, svd_solver="covariance_eigh").fit_transform(embeddings)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    return cross_val_predict(lda, features, y, method="predict_proba", cv=cv)


def neighbour_votes(index: np.ndarray, sims: np.ndarray, y: np.ndarray,
                    classes: int) -> np.ndarray:
    """(N, C) leave-one-out k-NN probabilities from a neighbour search of the same rows.

    Each row's class shares are its neighbours' labels weighted by 1 / cosine distance
    (scikit-learn's ``weights="distance"``, capped for identical rows), smoothed by a
    hundredth of a vote per class so no probability is 0. The search excludes each row
    itself, so every row is predicted without its own label: out of fold, for free.

    Args:
        index: (N, k) neighbour positions in the same rows; -1 (or a row's own position,
            the padding of the cell search) casts no vote.
        sims: (N, k) cosine similarities of those neighbours.
        y: (N,) int class indices 0..C-1.
    """
    n, k = index.shape
    own = np.arange(n)[:, None]
    weight = np.where((index >= 0) & (index != own),
                      1.0 / np.clip(1.0 - sims.astype(np.float64), 1e-6, None), 0.0)
    votes = np.zeros((n, classes))
    np.add.at(votes, (np.repeat(np.arange(n), k), y[np.clip(index, 0, None)].ravel()),
              weight.ravel())
    votes /= votes.sum(1, keepdims=True).clip(1e-12)
    votes += 0.01
    return votes / votes.sum(1, keepdims=True)


@dataclass(frozen=True)
class LabelCheck:
    """What :func:`label_issues` found, row-aligned with its input, and how."""

    mask: np.ndarray  # (N,) bool likely label errors
    quality: np.ndarray  # (N,) label quality in 0..1 (cleanlab), NaN when not scored
    suggested: np.ndarray  # (N,) str, the chosen probe's prediction
    note: str  # empty, or why fewer folds or no check ran
    probe: str = ""  # the probe whose probabilities cleanlab ranked
    # every probe tried: its out-of-fold accuracy on the given labels and its seconds
    tried: dict[str, tuple[float, float]] = field(default_factory=dict)

    def summary(self) -> str:
        """One log line: the chosen probe and what each probe scored and cost."""
        tried = ", ".join(f"{name} {acc:.3f} ({s:.1f} s)"
                          for name, (acc, s) in self.tried.items())
        return (f"label probe {self.probe}: {int(self.mask.sum())} likely label errors; "
                f"out-of-fold accuracy on the given labels: {tried}")

    def metrics(self) -> dict[str, str | float]:
        """clean.json's numbers: the probe, each probe's accuracy on the given labels."""
        return ({"label_probe": self.probe} if self.probe else {}) | {
            f"label_probe_accuracy_{name}": round(acc, 4)
            for name, (acc, _) in self.tried.items()}


def label_issues(embeddings: np.ndarray, labels: Sequence[str], *, folds: int, seed: int,
                 filter_by: str, probes: Sequence[str] = ("logistic",), dims: int = 128,
                 votes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
                 ) -> LabelCheck:
    """Likely label errors from out-of-fold predictions (cleanlab's ranking).

    Every probe in ``probes`` runs and the one most accurate on the given labels wins
    (ties: the earlier one): uniform label noise lowers every probe's accuracy alike, so
    the ranking of probes is the one on clean labels. A probe is ``logistic`` or ``lda``
    (:func:`out_of_fold_probabilities`, ``dims`` as there), or ``knn_<name>``: the
    leave-one-out k-NN vote (:func:`neighbour_votes`) over ``votes[name]``, a neighbour
    search of these rows ((index, sims), e.g. the embeddings' or the 16 px thumbnails').
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    classes, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    n = len(y)
    smallest = int(np.bincount(y).min()) if n else 0
    if len(classes) < 2 or smallest < 2:
        note = ("label check skipped: it needs two classes with at least 2 images each "
                f"(smallest class has {smallest})")
        return LabelCheck(np.zeros(n, bool), np.full(n, np.nan), np.array([""] * n, object),
                          note)
    k = min(folds, smallest)
    note = "" if k == folds else (f"label check used {k} folds, not {folds}: the smallest "
                                  f"class has {smallest} images")
    tried, probs = {}, {}
    for name in probes:
        start = time.perf_counter()
        if name.startswith("knn_"):
            probs[name] = neighbour_votes(*(votes or {})[name[4:]], y, len(classes))
        else:
            probs[name] = out_of_fold_probabilities(embeddings, y, folds=k, seed=seed,
                                                    probe=name, dims=dims)
        tried[name] = (float((probs[name].argmax(1) == y).mean()),
                       time.perf_counter() - start)
    best = max(tried, key=lambda name: tried[name][0])  # the first of equals
    mask = find_label_issues(y, probs[best], filter_by=filter_by)
    quality = get_label_quality_scores(y, probs[best])
    return LabelCheck(mask, quality, classes[probs[best].argmax(1)], note, best, tried)


IMAGE_OUTLIER = 0.65  # clean.outlier_threshold auto for images (ants/bees: 1.5 % flagged)
TEXT_OUTLIER_MADS = 6.0  # texts: this many median absolute deviations above the median
TEXT_LENGTH_FACTOR = 20.0  # texts: this many times longer or shorter than the median


def outliers(scores: np.ndarray, valid: np.ndarray, threshold: float | str, *,
             lengths: Sequence[int] | None = None, scripts: Sequence[str] | None = None
             ) -> tuple[np.ndarray, str]:
    """(N,) bool outliers among the valid rows and the rule, for clean.outlier_threshold:
    a number, or ``auto``: :data:`IMAGE_OUTLIER` for images; for texts (``lengths``
    given) a score :data:`TEXT_OUTLIER_MADS` median absolute deviations above the
    median (text embeddings are less uniform than image ones: a fixed distance flags a
    third of BBC News), or a length :data:`TEXT_LENGTH_FACTOR` times off the median.
    Texts written in another script than most (``scripts``, when one script holds at
    least :data:`MAIN_SCRIPT_SHARE` of them) are outliers at any threshold."""
    other, script_text = other_script(valid, scripts)
    if threshold != "auto" or lengths is None:
        cut = IMAGE_OUTLIER if threshold == "auto" else float(threshold)
        return valid & ((scores > cut) | other), f"mean cosine distance > {cut:g}{script_text}"
    median = float(np.median(scores[valid])) if valid.any() else 0.0
    mad = float(np.median(np.abs(scores[valid] - median))) if valid.any() else 0.0
    cut = median + TEXT_OUTLIER_MADS * 1.4826 * mad
    size = np.asarray(lengths, dtype=np.float64)
    middle = float(np.median(size[valid])) if valid.any() else 0.0
    odd = (size > middle * TEXT_LENGTH_FACTOR) | (size < middle / TEXT_LENGTH_FACTOR)
    return valid & ((scores > cut) | odd | other), (
        f"mean cosine distance > {cut:.4f} (median {median:.4f} + {TEXT_OUTLIER_MADS:g} MADs) "
        f"or length outside {middle / TEXT_LENGTH_FACTOR:.0f}-{middle * TEXT_LENGTH_FACTOR:.0f}"
        f" characters{script_text}")


MAIN_SCRIPT_SHARE = 0.8  # texts: a script this common is the data's; the others are odd


def other_script(valid: np.ndarray, scripts: Sequence[str] | None) -> tuple[np.ndarray, str]:
    """(N,) bool: valid texts whose script
    (:func:`pipeline.modality.text.decoding.dominant_script`) is
    not the one at least :data:`MAIN_SCRIPT_SHARE` of the valid texts share (none when
    no script is that common: a mixed corpus is the user's choice), and the rule's words."""
    odd = np.zeros(len(valid), dtype=bool)
    if not scripts or not valid.any():
        return odd, ""
    names = np.asarray(scripts, dtype=object)
    values, counts = np.unique(names[valid].astype(str), return_counts=True)
    main = values[counts.argmax()]
    if counts.max() < MAIN_SCRIPT_SHARE * valid.sum():
        return odd, ""
    odd = valid & (names != main)
    return odd, f" or a script other than {main or 'none'} ({int(odd.sum())} texts)"


def outlier_scores(sims: np.ndarray) -> np.ndarray:
    """(N,) mean cosine distance to the k nearest neighbours (0 = typical, 2 = far)."""
    return 1.0 - sims.mean(1) if sims.shape[1] else np.zeros(len(sims))
