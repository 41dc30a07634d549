import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import PipelineError, parse_sections
from pipeline.leakage import audit, train_rows_to_drop
from pipeline.manifest import write_manifest
from pipeline.splitting import split_temporal
from pipeline.stages import split

from .conftest import repo_params


def test_shared_clusters_and_groups_are_paired_with_a_train_row():
    splits = ["train", "train", "test", "val", "test", "train"]
    leaks = audit(splits, labels=["a"] * 6, clusters=["c1", "", "c1", "", "", ""],
                  groups=["", "g", "", "g", "h", "h"])
    got = sorted((leak.kind, leak.row, leak.train_row) for leak in leaks)
    assert got == [("duplicate_cluster", 2, 0), ("group", 3, 1), ("group", 4, 5)]
    drop = train_rows_to_drop(splits, leaks, clusters=["c1", "", "c1", "", "", ""],
                              groups=["", "g", "", "g", "h", "h"], times=None)
    assert list(np.flatnonzero(drop)) == [0, 1, 5]  # exactly the train-side members
    assert audit(splits, labels=["a"] * 6, clusters=[""] * 6) == []


def test_temporal_order_embargo_and_missing_classes():
    splits = ["train", "train", "val", "test"]
    times = [0.0, 10.0, 12.0, 20.0]
    assert audit(splits, labels=["a"] * 4, clusters=[""] * 4, times=times) == []
    leaks = audit(splits, labels=["a"] * 4, clusters=[""] * 4, times=times, embargo=5)
    assert [(leak.kind, leak.row, leak.train_row) for leak in leaks] == [("temporal", 2, 1)]
    drop = train_rows_to_drop(splits, leaks, clusters=[""] * 4, groups=None, times=times,
                              embargo=5)
    assert list(np.flatnonzero(drop)) == [1]
    missing = audit(splits, labels=["a", "a", "b", "b"], clusters=[""] * 4)
    assert [(leak.kind, leak.row) for leak in missing] == [("missing_class", 2)]


def test_temporal_split_by_cutoffs_with_embargo():
    times = np.arange(30, dtype=float)
    keys = [str(i) for i in range(30)]
    out = split_temporal(times, keys, fractions=(0.7, 0.15, 0.15), cutoffs=(10.0, 20.0),
                         embargo=3.0)
    assert set(out[:7]) == {"train"} and set(out[7:10]) == {""}  # 7, 8, 9 in the gap
    assert set(out[10:17]) == {"val"} and set(out[17:20]) == {""}
    assert set(out[20:]) == {"test"}
    assert not audit([o for o in out if o], labels=["a"] * 24, clusters=[""] * 24,
                     times=[t for t, o in zip(times, out) if o], embargo=3.0)


def _predefined_manifest(tmp_path):
    rows = []
    for i in range(12):
        rows.append({"image_id": f"t{i:02d}", "path": f"train/{'ab'[i % 2]}/{i}.png",
                     "label": "ab"[i % 2], "split": "train", "keep": True, "issues": "",
                     "cluster_id": "", "label_quality": "", "suggested_label": "",
                     "error": ""})
    for i in range(4):
        rows.append({"image_id": f"s{i:02d}", "path": f"test/{'ab'[i % 2]}/{i}.png",
                     "label": "ab"[i % 2], "split": "test", "keep": True, "issues": "",
                     "cluster_id": "", "label_quality": "", "suggested_label": "",
                     "error": ""})
    df = pd.DataFrame(rows)
    # a test image whose copy sits in train: clean put both in one cluster
    df.loc[df["image_id"].isin(["t03", "s01"]), "cluster_id"] = "t03"
    write_manifest(df, tmp_path / "clean.csv")
    return tmp_path / "clean.csv"


@pytest.mark.parametrize("policy", ["fail", "warn", "drop_from_train"])
def test_leakage_policies_on_a_user_imposed_split(tmp_path, policy):
    clean = _predefined_manifest(tmp_path)
    base, cfg = parse_sections(repo_params(**{"split.method": "predefined",
                                              "split.on_leakage": policy}), "base", "split")
    args = (clean, tmp_path / "split.csv", tmp_path / "split.json", tmp_path / "leak.csv")
    if policy == "fail":
        with pytest.raises(PipelineError, match=r"(?s)the split leaks .*test/b/1\.png ~ train "
                                                r"train/b/3\.png"):
            split.run(base, cfg, *args)
        return
    out = split.run(base, cfg, *args)
    pairs = pd.read_csv(tmp_path / "leak.csv")
    assert list(zip(pairs["image_id"], pairs["train_image_id"])) == [("s01", "t03")]
    counts = json.loads((tmp_path / "split.json").read_text())
    assert counts["leak_duplicate_cluster"] == 1
    assert ("t03" in set(out["image_id"])) == (policy == "warn")
    assert counts["dropped_from_train"] == (1 if policy == "drop_from_train" else 0)
    assert len(out) == (16 if policy == "warn" else 15)
