"""Layouts users already have (issue 12): train/ val/, train/ test/, train/ val/ test/
and a flat class-per-folder tree, through the real prepare, embed, clean and split."""

import json
import re
from collections import Counter

import pytest

from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.stages import clean, embed, prepare, split

from .conftest import repo_params, write_tree

GATES = {f"clean.max_rate.{k}": 1.0 for k in ("unreadable", "exact_duplicate",
         "near_duplicate", "conflicting_labels", "label_issue", "outlier")}


def _run(root, work, method="predefined", **overrides):
    """prepare, embed, clean and split on ``root``; the split manifest."""
    params = repo_params(**{"data.source": "folder", "data.root": str(root),
                            "embed.image_size": 32, "split.method": method,
                            **GATES, **overrides})
    base, data, embed_cfg, clean_cfg, split_cfg = parse_sections(
        params, "base", "data", "embed", "clean", "split")
    prepare.run(data, work / "prepared.csv")
    embed.run(data, embed_cfg, work / "prepared.csv", work / "embed")
    clean.run(data, clean_cfg, work / "prepared.csv", work / "embed", work / "clean.csv",
              work / "clean.json", decisions=work / "none.csv",
              review_out=work / "review.csv", review_html=work / "review.html")
    return split.run(base, data, split_cfg, work / "clean.csv", work / "embed",
                     work / "split.csv", work / "split.json",
                     leakage_csv=work / "leak.csv", leakage_html=work / "leak.html")


def test_train_val_layout_val_becomes_test_and_val_is_carved_from_train(tmp_path, capsys):
    root = tmp_path / "images"
    write_tree(root / "train", per_class=12)
    write_tree(root / "val", per_class=4, first=100)
    out = _run(root, tmp_path)
    printed = capsys.readouterr().out
    # the layout of the kept images (clean may drop a train-side copy of a val/ image)
    assert re.search(r"split: layout train/ \(3\d\) val/ \(12\): val/ is the held-out set, "
                     r"so it becomes test; val is carved from train/, stratified", printed)
    # every val/ image is a test image, nothing else is
    assert set(out.loc[out["split"] == "test", "path"]) == {
        p for p in out["path"] if p.startswith("val/")}
    assert (out["path"].str.startswith("val/")).sum() == 12
    carved = out[out["split"] == "val"]
    assert carved["path"].str.startswith("train/").all()
    assert Counter(carved["label"]) == {"c0": 2, "c1": 2, "c2": 2}  # stratified: 17.6 % of 12
    counts = json.loads((tmp_path / "all" / "split.json").read_text())
    assert (counts["val_images"], counts["test_images"]) == (6, 12)
    assert counts["train_images"] == (out["path"].str.startswith("train/")).sum() - 6


@pytest.mark.parametrize("folders", [("train", "test"), ("train", "val", "test"), ()])
def test_other_layouts_keep_working(tmp_path, folders):
    root = tmp_path / "images"
    for name in folders:
        write_tree(root / name, per_class=10 if name == "train" else 4,
                   first=0 if name == "train" else 100 + 10 * len(name))
    if not folders:  # flat class-per-folder tree, split by fractions
        write_tree(root, per_class=12)
    out = _run(root, tmp_path, method="predefined" if folders else "stratified")
    assert set(out["split"]) == {"train", "val", "test"}
    if "test" in folders:
        assert set(out.loc[out["split"] == "test", "path"]) == {
            p for p in out["path"] if p.startswith("test/")}


def test_layouts_that_cannot_work_fail_at_split_naming_layout_and_remedy(tmp_path):
    root = tmp_path / "only_val"
    write_tree(root / "val", per_class=4)
    with pytest.raises(PipelineError, match=r"split.method = predefined: the source has "
                                            r"val/ \(12\) but no train/.*stratified"):
        _run(root, tmp_path / "a")
    root = tmp_path / "only_train"
    write_tree(root / "train", per_class=4)
    with pytest.raises(PipelineError, match=r"only train/ \(12\): no held-out images.*test/"):
        _run(root, tmp_path / "b")
    # a test/ folder whose files are all unreadable: nothing is left to test on
    root = tmp_path / "broken_test"
    write_tree(root / "train", per_class=6)
    for c in range(3):
        (root / "test" / f"c{c}").mkdir(parents=True)
        (root / "test" / f"c{c}" / "x.png").write_text("not an image")
    with pytest.raises(PipelineError, match=r"only train/ \(18\).*clean left out 3 of the "
                                            r"source's val/test images"):
        _run(root, tmp_path / "c")
    # a split method whose fractions leave test empty fails here, not in evaluate
    root = tmp_path / "flat"
    write_tree(root, per_class=10)
    with pytest.raises(PipelineError, match=r"the test split is empty \(train \d+, val \d+, "
                                            r"test 0\); give split.fractions.test > 0"):
        _run(root, tmp_path / "d", method="stratified", **{
            "split.fractions": {"train": 0.8, "val": 0.2, "test": 0.0}})
    with pytest.raises(PipelineError, match=r"the val split is empty.*split.fractions.val > 0"):
        _run(_train_test(tmp_path / "tt"), tmp_path / "e", **{
            "split.fractions": {"train": 0.8, "val": 0.0, "test": 0.2}})


def _train_test(root):
    write_tree(root / "train", per_class=6)
    write_tree(root / "test", per_class=2, first=100)
    return root


def test_split_method_auto_follows_whether_the_source_recorded_a_split(capsys):
    """split.method: auto is predefined for train/ val/ folders, stratified for a flat
    tree, and says which; an explicit method is left alone."""
    import dataclasses

    import pandas as pd

    from pipeline.core.config import load_sections
    from pipeline.splitting.rules import resolve_method

    (cfg,) = load_sections("split")
    auto = dataclasses.replace(cfg, method="auto")
    recorded = pd.DataFrame({"split": ["train", "val", "train"]})
    flat = pd.DataFrame({"split": ["", "", ""]})
    assert resolve_method(auto, recorded).method == "predefined"
    assert "auto -> predefined" in capsys.readouterr().out
    assert resolve_method(auto, flat).method == "stratified"
    assert resolve_method(auto, pd.DataFrame({"label": ["a"]})).method == "stratified"
    explicit = dataclasses.replace(cfg, method="random")
    assert resolve_method(explicit, recorded).method == "random"
