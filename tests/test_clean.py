import json
import shutil

from PIL import Image

from pipeline.config import parse_sections
from pipeline.stages import clean, embed, prepare

from .conftest import class_image, repo_params


def _clean(data, cfg, tmp_path, embed_size=32):
    (embed_cfg,) = parse_sections(repo_params(**{"embed.image_size": embed_size}), "embed")
    prepare.run(data, tmp_path / "prepared.csv")
    embed.run(data, embed_cfg, tmp_path / "prepared.csv", tmp_path / "embed")
    return clean.run(data, cfg, tmp_path / "prepared.csv", tmp_path / "embed",
                     tmp_path / "clean.csv", tmp_path / "clean.json")


def test_clean_marks_unreadable_duplicates_and_conflicts(tree, tmp_path):
    (tree / "c0" / "empty.png").write_bytes(b"")
    (tree / "c1" / "text.png").write_text("not an image")
    # the same pixels as c0/img_00.png, re-encoded as BMP, same class: a duplicate
    Image.open(tree / "c0" / "img_00.png").save(tree / "c0" / "again.bmp")
    # the same pixels as c1/img_01.png filed under c2: conflicting labels
    shutil.copy(tree / "c1" / "img_01.png", tree / "c2" / "mislabelled.png")
    Image.fromarray(class_image(2, 50)).save(tree / "c2" / "fine.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree)})
    data, cfg = parse_sections(params, "data", "clean")
    df = _clean(data, cfg, tmp_path).set_index("path")

    assert df.loc["c0/empty.png", "issues"] == "unreadable"
    assert "empty file" in df.loc["c0/empty.png", "error"]
    assert df.loc["c1/text.png", "issues"] == "unreadable"
    pair = df.loc[["c0/img_00.png", "c0/again.bmp"]]
    assert pair["cluster_id"].nunique() == 1 and pair["cluster_id"].iloc[0] != ""
    assert sorted(pair["keep"]) == [False, True]
    assert (pair["issues"] == "exact_duplicate").sum() == 1
    conflict = df.loc[["c1/img_01.png", "c2/mislabelled.png"]]
    assert conflict["issues"].str.contains("conflicting_labels").all()
    assert not conflict["keep"].any()
    assert df.loc["c2/fine.png", "keep"] and df.loc["c2/fine.png", "issues"] == ""
    counts = json.loads((tmp_path / "clean.json").read_text())
    assert {k: counts[k] for k in ("images", "unreadable", "exact_duplicate",
                                    "conflicting_labels")} == {
        "images": 35, "unreadable": 2, "exact_duplicate": 2, "conflicting_labels": 2}


def test_flag_policy_keeps_duplicates(tree, tmp_path):
    shutil.copy(tree / "c0" / "img_00.png", tree / "c0" / "copy.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree),
                            "clean.exact_duplicates": "flag"})
    data, cfg = parse_sections(params, "data", "clean")
    df = _clean(data, cfg, tmp_path)
    assert df["keep"].all() and (df["issues"] == "exact_duplicate").sum() == 1
