import numpy as np

from pipeline.quality import conflicting_clusters, exact_duplicate_clusters


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
