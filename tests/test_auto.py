"""`auto` through the stages: image sizes resolved from the backbone and the data (an
explicit number wins, tiny images are not blown up), near copies found by the calibrated
rule in clean and in split's leakage audit, on tiny synthetic images."""

import json

import pandas as pd
import pytest
from PIL import Image

from pipeline.contracts import calibfiles
from pipeline.contracts.embedfiles import read_meta
from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.modality.image import cache as image_cache
from pipeline.stages import clean, embed, prepare, split

from .conftest import repo_params, write_tree
from .test_leakage import FLAG, LEAKING, _folder, leaky_folder  # noqa: F401 (fixture)


def _embed(root, work, **overrides):
    data, cfg = parse_sections(repo_params(**{"data.source": "folder", "data.root": str(root),
                                              "embed.calibration_sample": 5, **overrides}),
                               "data", "embed")
    prepare.run(data, work / "prepared.csv")
    embed.run(data, cfg, work / "prepared.csv", work / "embed")
    return read_meta(work / "embed")


def test_auto_sizes_follow_tiny_images_and_explicit_numbers_win(tmp_path):
    root = write_tree(tmp_path / "images", classes=2, per_class=4, size=8)  # 8 x 8 px
    meta = _embed(root, tmp_path)
    assert meta.image_size == 64  # 8 x the 8-px images, not the backbone's 224
    assert meta.image_size_reason.startswith("auto: 64 px") and meta.backbone_size == 224
    assert meta.backbone_test_size == 288
    (cache_cfg,) = parse_sections(repo_params(), "cache")
    assert image_cache.resolve_size(cache_cfg, tmp_path / "embed")[::2] == (48, "small")
    (explicit,) = parse_sections(repo_params(**{"cache.image_size": 40}), "cache")
    assert image_cache.resolve_size(explicit, tmp_path / "embed") == (40, "40 px as set", "small")
    assert _embed(root, tmp_path, **{"embed.image_size": 32}).image_size == 32


def test_auto_threshold_finds_a_planted_copy_and_not_a_distinct_image(leaky_folder,  # noqa: F811
                                                                      tmp_path):
    work = leaky_folder
    data, cfg = parse_sections(repo_params(**_folder(work), **FLAG), "data", "clean")
    assert cfg.near_duplicate_threshold == "auto"
    out = clean.run(data, cfg, work / "prepared.csv", work / "embed", tmp_path / "clean.csv",
                    tmp_path / "clean.json", decisions=tmp_path / "none.csv",
                    review_out=tmp_path / "review.csv", review_html=tmp_path / "review.html",
                    calibration=tmp_path / "calibration.json").set_index("path")
    cluster = out["cluster_id"]
    # JPEG and resized copies: one cluster with their original
    for copy_path, original in (("test/c1/copy_jpeg.jpg", "train/c1/train_1.png"),
                                ("test/c2/copy_small.png", "train/c2/train_2.png")):
        assert cluster[copy_path] != "" and cluster[copy_path] == cluster[original]
    assert cluster["train/c1/train_2.png"] == ""  # a distinct image is no copy
    counts = json.loads((tmp_path / "all" / "clean.json").read_text())
    assert counts["near_duplicate_estimated_recall"] >= 0.9
    assert counts["near_duplicate_estimated_false_match_rate"] <= cfg.max_false_rate
    assert counts["near_duplicate_separable"] is True
    assert calibfiles.read(tmp_path / "calibration.json").separable


def test_split_audit_with_auto_uses_clean_calibration(leaky_folder, tmp_path):  # noqa: F811
    work = leaky_folder
    data, cfg = parse_sections(repo_params(**_folder(work), **FLAG), "data", "clean")
    clean.run(data, cfg, work / "prepared.csv", work / "embed", tmp_path / "clean.csv",
              tmp_path / "clean.json", decisions=tmp_path / "none.csv",
              review_out=tmp_path / "review.csv", review_html=tmp_path / "review.html",
              calibration=tmp_path / "calibration.json")
    base, data, split_cfg = parse_sections(repo_params(**_folder(work), **{
        "split.method": "predefined", "split.on_leakage": "warn"}), "base", "data", "split")
    assert split_cfg.near_duplicate_threshold == "auto"
    split.run(base, data, split_cfg, tmp_path / "clean.csv", work / "embed",
              tmp_path / "split.csv", tmp_path / "split.json",
              leakage_csv=tmp_path / "leak.csv", leakage_html=tmp_path / "leak.html",
              calibration=tmp_path / "calibration.json")
    pairs = pd.read_csv(tmp_path / "leak.csv", dtype=str, keep_default_na=False)
    found = set(zip(pairs["path"], pairs["train_path"]))
    assert ("test/c1/copy_jpeg.jpg", "train/c1/train_1.png") in found  # across splits
    assert found <= LEAKING  # no distinct image flagged
    near = pairs[pairs["kind"] == "near_duplicate"]
    assert len(near) and near["detail"].str.contains("clean's rule").all()
    counts = json.loads((tmp_path / "all" / "split.json").read_text())
    assert counts["audit_rule_calibrated"] == 1  # the rule is clean's (its numbers: clean.json)


def test_unseparable_data_says_so_loudly(tmp_path, capsys):
    # flat images: every signal sees all of them as the same picture
    for c in range(2):
        (tmp_path / "images" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (16, 16), (100 + i, 100, 100 + c)).save(
                tmp_path / "images" / f"c{c}" / f"{i}.png")
    _embed(tmp_path / "images", tmp_path, **{"embed.image_size": 32})
    data, cfg = parse_sections(repo_params(**{
        "data.source": "folder", "data.root": str(tmp_path / "images"),
        **{k: v for k, v in FLAG.items() if k.startswith("clean.")}}), "data", "clean")
    # every image is a copy of one in the other class: all conflicting, none kept, which
    # fails the stage after its outputs are written
    with pytest.raises(PipelineError, match="clean kept none of the 12 images"):
        clean.run(data, cfg, tmp_path / "prepared.csv", tmp_path / "embed",
                  tmp_path / "clean.csv", tmp_path / "clean.json",
                  decisions=tmp_path / "none.csv", review_out=tmp_path / "review.csv",
                  review_html=tmp_path / "review.html",
                  calibration=tmp_path / "calibration.json")
    counts = json.loads((tmp_path / "all" / "clean.json").read_text())
    assert counts["near_duplicate_separable"] is False
    assert "WARNING: near-copy detection: CANNOT SEPARATE" in capsys.readouterr().err
