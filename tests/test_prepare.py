import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.core.files import file_sha256
from pipeline.stages import prepare

from .conftest import class_image, repo_params, write_tree


def _data(root, source="folder", manifest=""):
    params = repo_params(**{"data.source": source, "data.root": str(root),
                            "data.manifest": str(manifest)})
    return parse_sections(params, "data")[0]


def _snapshot(root):
    return {p: (file_sha256(p), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_folder_manifest_is_sorted_content_keyed_and_leaves_files_alone(tree, tmp_path):
    before = _snapshot(tree)
    df = prepare.run(_data(tree), tmp_path / "out.csv")
    assert _snapshot(tree) == before
    assert list(df.columns) == ["image_id", "path", "label"]
    assert len(df) == 30 and df["image_id"].is_unique
    assert list(df["image_id"]) == sorted(df["image_id"])
    first = df.iloc[0]
    assert first["image_id"] == file_sha256(tree / first["path"])[:16]
    written = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert written.equals(df.astype(str))


def test_ids_do_not_depend_on_names_or_listing_order(tree, tmp_path):
    df1 = prepare.run(_data(tree), tmp_path / "a.csv")
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    for p in sorted(other.rglob("*.png")):  # rename: listing order changes, content not
        os.rename(p, p.with_name("z" + p.name))
    df2 = prepare.run(_data(other), tmp_path / "b.csv")
    assert list(df1["image_id"]) == list(df2["image_id"])


def test_byte_identical_files_get_distinct_ids(tree, tmp_path):
    shutil.copy(tree / "c0" / "img_00.png", tree / "c1" / "copy.png")
    df = prepare.run(_data(tree), tmp_path / "out.csv")
    base = file_sha256(tree / "c1" / "copy.png")[:16]
    assert set(df.loc[df["image_id"].str.startswith(base), "image_id"]) == {base, base + "-1"}


def test_split_folders_are_recorded(tmp_path):
    root = tmp_path / "root"
    write_tree(root / "train", per_class=4)
    write_tree(root / "test", per_class=2)
    df = prepare.run(_data(root), tmp_path / "out.csv")
    assert df["split"].value_counts().to_dict() == {"train": 12, "test": 6}
    assert set(df["label"]) == {"c0", "c1", "c2"}
    (root / "cats").mkdir()
    with pytest.raises(PipelineError, match="mixes split folders"):
        prepare.run(_data(root), tmp_path / "out.csv")


def test_csv_source_keeps_optional_columns(tree, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"path": ["c0/img_00.png", "c1/img_01.png"], "label": ["x", "y"],
                  "group": ["g1", "g2"], "timestamp": ["2024-01-01", "2024-02-01"]}
                 ).to_csv(manifest, index=False)
    df = prepare.run(_data(tree, "csv", manifest), tmp_path / "out.csv")
    assert set(df.columns) == {"image_id", "path", "label", "group", "timestamp"}
    pd.DataFrame({"file": ["a.png"]}).to_csv(manifest, index=False)
    with pytest.raises(PipelineError, match="lacks column"):
        prepare.run(_data(tree, "csv", manifest), tmp_path / "out.csv")


def test_missing_root_and_demo_mismatch_fail_clearly(tmp_path):
    with pytest.raises(PipelineError, match="data.root = .*no such folder"):
        prepare.run(_data(tmp_path / "nope"), tmp_path / "out.csv")
    with pytest.raises(PipelineError, match="data.source = demo reads"):
        prepare.run(_data(tmp_path, source="demo"), tmp_path / "out.csv")


def test_non_images_are_listed_for_clean_to_report(tree, tmp_path):
    (tree / "c0" / "notes.txt").write_text("hello")
    Image.fromarray(class_image(0, 99)).save(tree / "c0" / ".hidden.png")
    df = prepare.run(_data(tree), tmp_path / "out.csv")
    assert "c0/notes.txt" in set(df["path"])
    assert "c0/.hidden.png" not in set(df["path"])
