from collections import Counter

import numpy as np
import pytest

from pipeline.splitting.assign import (
    SplitError,
    carve_val,
    check_classes,
    merge_keys,
    predefined_layout,
    split_temporal,
    split_units,
)


def _data(n_per_class=(40, 23, 7)):
    labels = [f"c{k}" for k, n in enumerate(n_per_class) for _ in range(n)]
    ids = [f"id{i:04d}" for i in range(len(labels))]
    return labels, ids


def test_stratified_is_exact_per_class():
    labels, ids = _data()
    out = split_units(labels, ids, fractions=(0.7, 0.15, 0.15), seed=0, stratify=True)
    for label, n in Counter(labels).items():
        got = Counter(s for s, lab in zip(out, labels) if lab == label)
        for name, frac in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            assert abs(got[name] - n * frac) <= 1, (label, name, got)


def test_same_split_whatever_the_row_order():
    labels, ids = _data()
    out = split_units(labels, ids, fractions=(0.6, 0.2, 0.2), seed=3, stratify=True)
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = split_units([labels[i] for i in perm], [ids[i] for i in perm],
                           fractions=(0.6, 0.2, 0.2), seed=3, stratify=True)
    assert dict(zip(ids, out)) == {ids[i]: s for i, s in zip(perm, shuffled)}
    other_seed = split_units(labels, ids, fractions=(0.6, 0.2, 0.2), seed=4, stratify=True)
    assert list(other_seed) != list(out)


def test_clusters_never_straddle_splits():
    labels, ids = _data()
    keys = [f"k{i // 3}" for i in range(len(ids))]  # clusters of three rows
    out = split_units(labels, keys, fractions=(0.5, 0.25, 0.25), seed=0, stratify=False)
    for key in set(keys):
        assert len({s for s, k in zip(out, keys) if k == key}) == 1


def test_merge_keys_links_through_shared_values():
    keys = merge_keys(["a", "a", "", "", ""], ["", "g1", "g1", "g2", ""])
    assert keys[0] == keys[1] == keys[2] and len({keys[2], keys[3], keys[4]}) == 3


def test_temporal_puts_oldest_in_train_and_newest_in_test():
    times = list(range(20))
    out = split_temporal(times, [str(t) for t in times], fractions=(0.6, 0.2, 0.2))
    assert list(out) == ["train"] * 12 + ["val"] * 4 + ["test"] * 4


def test_predefined_keeps_splits_and_carves_val_from_train():
    labels, ids = _data((20, 20, 20))
    given = ["train" if i % 4 else "test" for i in range(len(ids))]
    out = carve_val(labels, ids, given, val_fraction=0.25, seed=0)
    assert all(o == "test" for o, g in zip(out, given) if g == "test")
    carved = Counter(lab for o, lab in zip(out, labels) if o == "val")
    assert set(carved.values()) == {4}  # 25 % of each class's 15 train rows, rounded
    with pytest.raises(SplitError, match="expected train, val or test"):
        carve_val(labels, ids, ["training"] * len(ids), val_fraction=0.2, seed=0)


def test_every_class_reaches_train_and_small_classes_warn():
    out = split_units(["a"] * 10 + ["b"], [str(i) for i in range(11)],
                      fractions=(0.7, 0.15, 0.15), seed=0, stratify=True)
    assert out[-1] == "train"
    warnings = check_classes(["a"] * 10 + ["b"], list(out))
    assert warnings == ["class 'b' has no image in val or test"]
    with pytest.raises(SplitError, match="class 'b' has no image in train"):
        check_classes(["a", "b"], ["train", "test"])


def test_predefined_layouts_train_val_becomes_train_and_test():
    given = ["train"] * 6 + ["val"] * 3
    out, decision = predefined_layout(given)
    assert list(out) == ["train"] * 6 + ["test"] * 3
    assert "val/ is the held-out set, so it becomes test" in decision
    assert "train/ (6) val/ (3)" in decision
    for layout in (["train", "test"], ["train", "val", "test"]):
        out, decision = predefined_layout(layout)
        assert list(out) == layout  # used as they are
    with pytest.raises(SplitError, match=r"val/ \(2\) but no train/.*split.method: stratified"):
        predefined_layout(["val", "val"])
    with pytest.raises(SplitError, match=r"only train/ \(2\): no held-out images.*test/"):
        predefined_layout(["train", "train"])
    with pytest.raises(SplitError, match="expected train, val or test"):
        predefined_layout(["train", "validation"])
