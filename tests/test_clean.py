import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.core.files import file_sha256
from pipeline.dataquality import cleaning
from pipeline.stages import clean, embed, prepare

from .conftest import class_image, repo_params


def _clean(data, cfg, tmp_path, embed_size=32, decisions=None):
    (embed_cfg,) = parse_sections(repo_params(**{"embed.image_size": embed_size}), "embed")
    prepare.run(data, tmp_path / "prepared.csv")
    embed.run(data, embed_cfg, tmp_path / "prepared.csv", tmp_path / "embed")
    return clean.run(data, cfg, tmp_path / "prepared.csv", tmp_path / "embed",
                     tmp_path / "clean.csv", tmp_path / "clean.json",
                     decisions=decisions or tmp_path / "no_decisions.csv",
                     review_out=tmp_path / "review.csv", review_html=tmp_path / "review.html")


def test_clean_marks_unreadable_duplicates_and_conflicts(tree, tmp_path):
    (tree / "c0" / "empty.png").write_bytes(b"")
    (tree / "c1" / "text.png").write_text("not an image")
    # the same pixels as c0/img_00.png, re-encoded as BMP, same class: a duplicate
    Image.open(tree / "c0" / "img_00.png").save(tree / "c0" / "again.bmp")
    # the same pixels as c1/img_01.png filed under c2: conflicting labels
    shutil.copy(tree / "c1" / "img_01.png", tree / "c2" / "mislabelled.png")
    Image.fromarray(class_image(2, 50)).save(tree / "c2" / "fine.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree), **_loose_gates()})
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
    counts = json.loads((tmp_path / "all" / "clean.json").read_text())
    assert {k: counts[k] for k in ("images", "unreadable", "exact_duplicate",
                                    "conflicting_labels")} == {
        "images": 35, "unreadable": 2, "exact_duplicate": 2, "conflicting_labels": 2}
    # the label check's probe: the candidate most accurate on the given labels
    tried = {k.removeprefix("label_probe_accuracy_"): v for k, v in counts.items()
             if k.startswith("label_probe_accuracy_")}
    assert set(tried) == {"logistic", "knn_embedding", "knn_thumbnail"}
    assert tried[counts["label_probe"]] == max(tried.values())
    # dvc exp show's column: the images kept, as the manifest says
    assert json.loads((tmp_path / "clean.json").read_text()) == {"kept": int(df["keep"].sum())}


def test_flag_policy_keeps_duplicates(tree, tmp_path):
    shutil.copy(tree / "c0" / "img_00.png", tree / "c0" / "copy.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree),
                            "clean.exact_duplicates": "flag", **_loose_gates()})
    data, cfg = parse_sections(params, "data", "clean")
    df = _clean(data, cfg, tmp_path)
    assert df["keep"].all() and (df["issues"] == "exact_duplicate").sum() == 1


def test_large_set_settings_find_the_same_duplicates(tree, tmp_path):
    # the cell search (above exact_search_max) and the lda probe, wired through the stage
    shutil.copy(tree / "c0" / "img_00.png", tree / "c0" / "copy.png")
    shutil.copy(tree / "c1" / "img_01.png", tree / "c2" / "mislabelled.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree), **_loose_gates(),
                            "clean.exact_search_max": 10, "clean.search_probes": 2,
                            "clean.label_probe": "lda", "clean.probe_dims": 8})
    data, cfg = parse_sections(params, "data", "clean")
    df = _clean(data, cfg, tmp_path).set_index("path")
    assert df.loc["c0/copy.png", "cluster_id"] == df.loc["c0/img_00.png", "cluster_id"] != ""
    assert (df["issues"].str.contains("exact_duplicate")).sum() == 2
    assert set(df.index[df["issues"].str.contains("conflicting_labels")]) == {
        "c1/img_01.png", "c2/mislabelled.png"}
    assert df["label_quality"].ne("").all()


def _loose_gates():
    return {f"clean.max_rate.{k}": 1.0 for k in ("unreadable", "exact_duplicate",
            "near_duplicate", "conflicting_labels", "label_issue", "outlier")}


def test_review_list_page_and_decisions_override_detectors(tree, tmp_path):
    (tree / "c0" / "empty.png").write_bytes(b"")
    shutil.copy(tree / "c0" / "img_00.png", tree / "c0" / "copy.png")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree), **_loose_gates()})
    data, cfg = parse_sections(params, "data", "clean")
    df = _clean(data, cfg, tmp_path)
    review = pd.read_csv(tmp_path / "review.csv", dtype=str, keep_default_na=False)
    assert list(review["issue"][:2]) == ["unreadable", "exact_duplicate"]
    page = (tmp_path / "review.html").read_text()
    assert "<h2>unreadable (1)</h2>" in page and "data:image/png;base64," in page

    dropped = df.loc[df["issues"] == "exact_duplicate", "image_id"].item()
    fine = df.loc[df["path"] == "c1/img_03.png", "image_id"].item()
    other = df.loc[df["path"] == "c2/img_04.png", "image_id"].item()
    decisions = tmp_path / "decisions.csv"
    decisions.write_text(f"image_id,action\n{dropped},keep\n{fine},drop\n"
                         f"{other},relabel:c0\n")
    df = _clean(data, cfg, tmp_path, decisions=decisions).set_index("image_id")
    assert df.loc[dropped, "keep"] and not df.loc[fine, "keep"]
    assert df.loc[other, "label"] == "c0" and df.loc[other, "decision"] == "relabel:c0"
    decisions.write_text(f"image_id,action\n{fine},delete\n")
    with pytest.raises(PipelineError, match="action 'delete'.*keep, drop or relabel"):
        _clean(data, cfg, tmp_path, decisions=decisions)


def test_too_many_problems_fail_with_rate_and_limit(tree, tmp_path):
    (tree / "c0" / "empty.png").write_bytes(b"")
    params = repo_params(**{"data.source": "folder", "data.root": str(tree), **_loose_gates(),
                            "clean.max_rate.unreadable": 0.01})
    data, cfg = parse_sections(params, "data", "clean")
    with pytest.raises(PipelineError, match=r"unreadable: 3\.2% of images, limit "
                                            r"clean\.max_rate\.unreadable = 1\.0%"):
        _clean(data, cfg, tmp_path)
    assert (tmp_path / "clean.csv").exists()  # the outputs are written before failing


def _snapshot(root):
    """Every path under root: (sha256, mtime) of files, mtime of folders (adds, removals)."""
    return {p: (file_sha256(p) if p.is_file() else "dir", p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


def test_source_images_are_never_modified(tree, tmp_path):
    (tree / "c0" / "empty.png").write_bytes(b"")
    (tree / "c1" / "truncated.png").write_bytes((tree / "c1" / "img_00.png").read_bytes()[:60])
    shutil.copy(tree / "c0" / "img_00.png", tree / "c2" / "copy.png")  # a conflicting copy
    Image.open(tree / "c0" / "img_01.png").rotate(90).save(tree / "c0" / "rotated.jpg")
    before = _snapshot(tree)
    params = repo_params(**{"data.source": "folder", "data.root": str(tree), **_loose_gates(),
                            "clean.near_duplicates": "drop", "clean.label_issues": "drop",
                            "clean.outliers": "drop"})
    data, cfg = parse_sections(params, "data", "clean")
    decisions = tmp_path / "decisions.csv"
    dropped = file_sha256(tree / "c1" / "img_03.png")[:16]
    decisions.write_text(f"image_id,action\n{dropped},drop\n")  # a person's drop, too
    df = _clean(data, cfg, tmp_path, decisions=decisions)
    assert not df["keep"].all()  # something was dropped, from the manifest only
    assert _snapshot(tree) == before


def test_policies_only_flag_fixed_val_test_rows_and_drop_train_side_copies():
    # issue 12: every drop policy on; rows 1, 5, 7, 8, 11 are a fixed val/test set
    split = ["train", "test", "train", "train", "train", "val", "train", "test", "val",
             "train", "train", "test"]
    clusters = ["0", "0", "0", "3", "3", "5", "5", None, None, None, None, None]
    exact = ["0", "0", None, None, None, None, None, None, None, None, None, None]

    def rows(*idx):
        mask = np.zeros(12, dtype=bool)
        mask[list(idx)] = True
        return mask

    # what detect reports: each cluster keeps its smallest id unflagged
    found = dict(zip(cleaning.ISSUES, (rows(11), rows(1), rows(2, 4, 6), rows(5, 6),
                                    rows(7, 9), rows(8, 10))))
    findings = cleaning.Findings(found, {}, clusters, exact, np.full(12, np.nan),
                              np.full(12, "", dtype=object))
    fixed = cleaning.fixed_rows(pd.DataFrame({"split": split}))
    assert list(np.flatnonzero(fixed)) == [1, 5, 7, 8, 11]
    copies = cleaning.aim_at_train_side(findings, fixed)
    assert list(np.flatnonzero(copies)) == [0, 2, 6]  # train rows sharing a val/test cluster
    params = repo_params(**{"clean.label_issues": "drop", "clean.outliers": "drop"})
    (cfg,) = parse_sections(params, "clean")
    keep, issues = cleaning.apply_policies(findings, cfg, fixed)
    assert list(np.flatnonzero(keep)) == [1, 3, 5, 7, 8]
    # the fixed rows are flagged, kept (an unreadable one cannot be kept)
    assert [issues[i] for i in (1, 5, 7, 8, 11)] == [
        ["exact_duplicate"], ["near_duplicate", "conflicting_labels"], ["label_issue"],
        ["outlier"], ["unreadable"]]
    assert issues[0] == ["exact_duplicate"] and issues[2] == ["near_duplicate"]
    # without a fixed set, the policies are as before: the smallest id of a cluster stays
    findings.found = dict(zip(cleaning.ISSUES, (rows(11), rows(1), rows(2, 4, 6), rows(5, 6),
                                             rows(7, 9), rows(8, 10))))
    keep, _ = cleaning.apply_policies(findings, cfg)
    assert list(np.flatnonzero(keep)) == [0, 3]
