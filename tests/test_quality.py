import numpy as np

from benchmarks.common import probe_accuracy
from pipeline.dataquality.quality import (
    conflicting_clusters,
    exact_duplicate_clusters,
    label_issues,
    near_duplicate_clusters,
    neighbour_votes,
    neighbours,
    outlier_scores,
    outliers,
    similar_pairs,
)


def test_exact_duplicates_cluster_on_the_smallest_key():
    hashes = ["h1", "h2", "h1", None, "h1", "h3"]
    ids = ["e", "b", "a", "z", "c", "d"]
    clusters = exact_duplicate_clusters(hashes, order=ids)
    assert list(clusters) == ["a", None, "a", None, "a", None]


def test_conflicting_labels_mark_every_member():
    clusters = ["a", "a", None, "b", "b"]
    labels = ["cat", "dog", "cat", "cat", "cat"]
    assert list(conflicting_clusters(clusters, labels)) == [True, True, False, False, False]
    assert conflicting_clusters([], []).dtype == np.bool_


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 32))
    emb = centers[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 32)) * 0.5
    return emb, np.repeat(["a", "b", "c"], 40), rng


def _normalise(emb):
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def test_neighbours_match_brute_force_in_chunks():
    emb, _, _ = _blobs()
    emb = _normalise(emb)
    index, sims = neighbours(emb, k=4, exact_max=1000, probes=1, chunk=7)
    full = emb @ emb.T
    np.fill_diagonal(full, -np.inf)
    assert np.array_equal(index, np.argsort(-full, axis=1, kind="stable")[:, :4])
    assert np.allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :4], atol=1e-6)


def test_similar_pairs_match_brute_force_in_chunks_without_a_k():
    emb, _, _ = _blobs()
    emb = _normalise(emb)
    queries, reference = emb[:30], emb[30:]
    queries[3] = reference[7] = reference[8] = queries[2]  # row 2 has three copies
    queries[5] = 0.0  # not decoded: matches nothing
    full = queries @ reference.T
    rows, cols, sims = similar_pairs(queries, reference, threshold=0.9, chunk=4)
    expected = sorted(zip(*np.nonzero(full >= 0.9)), key=lambda p: (p[0], -full[p], p[1]))
    assert list(zip(rows, cols)) == expected
    assert np.allclose(sims, [full[p] for p in expected])
    assert {(2, 7), (2, 8), (3, 7), (3, 8)} <= set(zip(rows.tolist(), cols.tolist()))
    assert 5 not in set(rows)
    assert list(zip(*similar_pairs(queries, reference, threshold=0.9)[:2])) == expected
    empty = similar_pairs(queries, reference[:0], threshold=0.9)
    assert [len(a) for a in empty] == [0, 0, 0]


def test_near_copies_cluster_and_outliers_score_high():
    emb, _, rng = _blobs()
    emb[5] = emb[4] + 0.01  # a near copy of row 4
    emb[119] = rng.normal(size=32) * 5  # far from everything
    emb = _normalise(emb)
    index, sims = neighbours(emb, k=5, exact_max=1000, probes=1)
    ids = [f"i{i:03d}" for i in range(120)]
    clusters = near_duplicate_clusters(index, sims, threshold=0.98, order=ids,
                                       valid=np.ones(120, bool))
    assert {i: c for i, c in enumerate(clusters) if c} == {4: "i004", 5: "i004"}
    invalid = np.ones(120, bool)
    invalid[5] = False
    assert not any(near_duplicate_clusters(index, sims, threshold=0.98, order=ids,
                                           valid=invalid))
    assert int(np.argmax(outlier_scores(sims))) == 119


def test_label_issues_find_flipped_labels_and_explain_small_classes():
    emb, labels, _ = _blobs()
    flipped = labels.copy()
    flipped[[10, 50, 90]] = ["b", "c", "a"]
    check = label_issues(_normalise(emb), flipped, folds=5, seed=0,
                         filter_by="prune_by_noise_rate")
    assert check.mask[[10, 50]].all() and check.mask.sum() <= 6 and check.note == ""
    assert check.quality[10] < np.median(check.quality) and check.suggested[10] == "a"
    assert check.probe == "logistic" and list(check.tried) == ["logistic"]
    few = np.array(["a"] * 10 + ["b"] * 3)
    check = label_issues(_normalise(emb[:13]), few, folds=5, seed=0,
                         filter_by="prune_by_noise_rate")
    assert "3 folds" in check.note
    check = label_issues(_normalise(emb[:11]), ["a"] * 10 + ["b"], folds=5,
                         seed=0, filter_by="prune_by_noise_rate")
    assert "skipped" in check.note and not check.mask.any() and check.probe == ""


def test_neighbour_votes_leave_each_row_out_and_skip_padding():
    y = np.array([0, 0, 1, 1])
    index = np.array([[1, 2], [0, 3], [3, -1], [2, 3]])  # row 3's own index: cell padding
    sims = np.array([[0.9, 0.5], [0.9, 0.1], [0.8, 0.0], [0.8, 0.0]], dtype=np.float32)
    votes = neighbour_votes(index, sims, y, 2)
    assert np.allclose(votes.sum(1), 1) and (votes > 0).all()
    assert votes[0, 0] > 0.75 and votes[2, 1] > 0.95 and votes[3, 1] > 0.95
    # the vote is 1 / (1 - cosine): a near copy outvotes a far neighbour
    assert np.isclose(votes[0, 0] / votes[0, 1], (0.01 + 10 / 12) / (0.01 + 2 / 12))


def test_the_probe_most_accurate_on_the_given_labels_ranks_the_label_issues():
    """Labels that follow the pixels (the thumbnails' neighbours), not the embeddings: the
    k-NN vote over the thumbnails wins, finds the flips, and says what each probe scored."""
    emb, labels, _ = _blobs()
    rng = np.random.default_rng(5)
    noise = _normalise(rng.normal(size=emb.shape))  # embeddings that know nothing
    flipped = labels.copy()
    flipped[[10, 50, 90]] = ["b", "c", "a"]
    searches = {"embedding": neighbours(noise, k=10, exact_max=1000, probes=8),
                "thumbnail": neighbours(_normalise(emb), k=10, exact_max=1000, probes=8)}
    check = label_issues(noise, flipped, folds=5, seed=0, filter_by="prune_by_noise_rate",
                         probes=("logistic", "knn_embedding", "knn_thumbnail"),
                         votes=searches)
    assert check.probe == "knn_thumbnail" and list(check.tried) == [
        "logistic", "knn_embedding", "knn_thumbnail"]
    assert check.tried["knn_thumbnail"][0] > 0.9 > 0.6 > check.tried["logistic"][0]
    assert check.mask[[10, 50, 90]].all() and check.mask.sum() <= 6
    assert check.suggested[10] == "a"
    assert check.metrics()["label_probe"] == "knn_thumbnail"
    assert "knn_thumbnail" in check.summary() and "logistic" in check.summary()


def test_cell_search_finds_near_copies_and_most_neighbours():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(20, 32))
    emb = centers[rng.integers(0, 20, 3000)] + rng.normal(size=(3000, 32)) * 0.6
    copies = rng.choice(3000, size=40, replace=False)
    emb[copies[20:]] = emb[copies[:20]] + rng.normal(size=(20, 32)) * 0.01
    emb = _normalise(emb)
    index, sims = neighbours(emb, k=5, exact_max=1000, probes=8)  # 55 cells, 8 searched
    exact_index, exact_sims = neighbours(emb, k=5, exact_max=3000, probes=8)
    rows = np.arange(3000)[:, None]
    assert not (index == rows).any()
    assert np.all(np.diff(sims, axis=1) <= 0)
    assert np.allclose(sims, np.einsum("nd,nkd->nk", emb, emb[index]), atol=1e-5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(index, exact_index)])
    assert recall > 0.8
    assert np.all(sims <= exact_sims + 1e-6)  # it can miss a neighbour, never invent one
    ids = [f"i{i:04d}" for i in range(3000)]
    clusters = near_duplicate_clusters(index, sims, threshold=0.99, order=ids,
                                       valid=np.ones(3000, bool))
    assert all(clusters[a] is not None and clusters[a] == clusters[b]
               for a, b in zip(copies[:20], copies[20:]))
    assert sum(c is not None for c in clusters) == 40


def test_lda_probe_finds_flipped_labels_on_principal_components():
    emb, labels, _ = _blobs()
    flipped = labels.copy()
    flipped[[10, 50, 90]] = ["b", "c", "a"]
    check = label_issues(_normalise(emb), flipped, folds=5, seed=0,
                         filter_by="prune_by_noise_rate", probes=("lda",), dims=8)
    assert check.mask[[10, 50, 90]].all() and check.mask.sum() <= 6 and check.note == ""
    assert check.suggested[10] == "a" and check.quality[10] < np.median(check.quality)
    assert probe_accuracy(_normalise(emb), labels, folds=5, seed=0, probe="lda",
                          dims=8) > 0.95


def test_text_outliers_by_distance_length_and_a_script_other_than_most():
    from pipeline.modality.text.decoding import dominant_script

    assert dominant_script("Shares rose; 3 banks cut rates.") == "LATIN"
    assert dominant_script("Акции выросли, banks") == "CYRILLIC"
    assert dominant_script("株価が上がった") == "CJK"  # Han and kana: one script
    assert dominant_script("2024 — 3.5 %") == ""
    n = 40
    scores = np.full(n, 0.3) + np.linspace(0, 0.01, n)
    lengths = [500] * n
    scripts = ["LATIN"] * n
    scores[0], lengths[1], scripts[2], scripts[3] = 0.9, 20_000, "CYRILLIC", ""
    valid = np.ones(n, dtype=bool)
    valid[4] = False
    scripts[4] = "GREEK"  # unreadable rows are never outliers
    odd, rule = outliers(scores, valid, "auto", lengths=lengths, scripts=scripts)
    assert np.flatnonzero(odd).tolist() == [0, 1, 2, 3]
    assert "script other than LATIN (2 texts)" in rule
    mixed = ["LATIN", "CYRILLIC"] * (n // 2)  # a bilingual corpus: no script is odd
    odd, rule = outliers(scores, valid, "auto", lengths=lengths, scripts=mixed)
    assert np.flatnonzero(odd).tolist() == [0, 1] and "script" not in rule
    odd, _ = outliers(scores, valid, 0.95, scripts=scripts)  # a set threshold: scripts too
    assert np.flatnonzero(odd).tolist() == [2, 3]
