import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipeline.contracts.manifest import write_manifest
from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.splitting.assign import split_temporal
from pipeline.splitting.leakage import audit, train_rows_to_drop
from pipeline.stages import clean, embed, prepare, split

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


def _unit_rows(n, seed=0, dim=16):
    rows = np.random.default_rng(seed).normal(size=(n, dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_exact_and_near_copies_in_train_each_pair_once_and_dropped_exactly():
    splits = ["train", "train", "train", "train", "test", "val", "test", "test", "train"]
    emb = _unit_rows(9)
    emb[4] = emb[0]  # test 4: an exact copy of train 0 (same pixels, same features)
    emb[5] = emb[1] + 0.05 * emb[2]  # val 5: a near copy of train 1 ...
    emb[5] /= np.linalg.norm(emb[5])
    emb[8] = emb[1]  # ... which has an exact copy in train (8)
    emb[6] = emb[3]  # test 6: clean clustered it with train 3, and its features agree
    emb[7] = 0.0  # test 7: not decoded, no hash: matches nothing
    hashes = ["h0", "h1", "h2", "h3", "h0", "h5", "h6", None, "h1"]
    clusters = ["", "c1", "", "c3", "", "c1", "c3", "", "c1"]
    leaks = audit(splits, labels=["a"] * 9, clusters=clusters, hashes=hashes,
                  embeddings=emb, near_threshold=0.98)
    got = [(leak.kind, leak.row, leak.train_row) for leak in leaks]
    assert got == [("exact_duplicate", 4, 0), ("near_duplicate", 5, 1), ("near_duplicate", 5, 8),
                   ("near_duplicate", 6, 3)]  # no duplicate_cluster repeats of 5-1, 6-3
    assert leaks[0].similarity == pytest.approx(1.0) and leaks[1].similarity >= 0.98
    drop = train_rows_to_drop(splits, leaks, clusters=clusters, groups=None, times=None)
    assert list(np.flatnonzero(drop)) == [0, 1, 3, 8]  # exactly the train-side copies
    kept = ~drop
    assert audit([s for s, k in zip(splits, kept) if k], labels=["a"] * int(kept.sum()),
                 clusters=[c for c, k in zip(clusters, kept) if k],
                 hashes=[h for h, k in zip(hashes, kept) if k], embeddings=emb[kept],
                 near_threshold=0.98) == []
    # a cluster straddling the split whose features disagree is still a leak
    far = emb.copy()
    far[6] = _unit_rows(1, seed=9)[0]
    leaks = audit(splits, labels=["a"] * 9, clusters=clusters, hashes=hashes,
                  embeddings=far, near_threshold=0.98)
    assert ("duplicate_cluster", 6, 3) in [(leak.kind, leak.row, leak.train_row)
                                           for leak in leaks]
    with pytest.raises(ValueError, match="near_threshold"):
        audit(splits, labels=["a"] * 9, clusters=clusters, embeddings=emb)


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
    # the embed stage's outputs: features that agree on no pair (clean's cluster above
    # came from elsewhere, e.g. a lower threshold), one image it could not decode
    ids = sorted(df["image_id"])
    embeddings = _unit_rows(len(ids), dim=64)
    embeddings[ids.index("t05")] = 0.0
    (tmp_path / "embed").mkdir()
    np.save(tmp_path / "embed" / "embeddings.npy", embeddings)
    (tmp_path / "embed" / "meta.json").write_text(json.dumps({
        "ids": ids, "valid": [i != "t05" for i in ids],
        "pixel_hash": [None if i == "t05" else f"hash-{i}" for i in ids],
        "error": ["" if i != "t05" else "corrupt" for i in ids]}))
    return tmp_path / "clean.csv"


# these tests check the explicit cosine threshold (the default before `auto`)
EXPLICIT = {"split.near_duplicate_threshold": 0.98}


@pytest.mark.parametrize("policy", ["fail", "warn", "drop_from_train"])
def test_leakage_policies_on_a_user_imposed_split(tmp_path, policy):
    clean = _predefined_manifest(tmp_path)
    base, data, cfg = parse_sections(repo_params(**{
        "split.method": "predefined", "split.on_leakage": policy,
        "data.source": "folder", "data.root": str(tmp_path / "images"), **EXPLICIT}),
        "base", "data", "split")
    args = (clean, tmp_path / "embed", tmp_path / "split.csv", tmp_path / "split.json")
    outputs = {"leakage_csv": tmp_path / "leak.csv", "leakage_html": tmp_path / "leak.html"}
    if policy == "fail":
        with pytest.raises(PipelineError, match=r"(?s)the split leaks .*test/b/1\.png ~ train "
                                                r"train/b/3\.png"):
            split.run(base, data, cfg, *args, **outputs)
        page = (tmp_path / "leak.html").read_text()
        assert "<h2>duplicate_cluster (1)</h2>" in page and "unreadable: file not found" in page
        return
    out = split.run(base, data, cfg, *args, **outputs)
    pairs = pd.read_csv(tmp_path / "leak.csv")
    assert list(zip(pairs["image_id"], pairs["train_image_id"])) == [("s01", "t03")]
    counts = json.loads((tmp_path / "all" / "split.json").read_text())
    assert counts["leak_duplicate_cluster"] == 1
    assert ("t03" in set(out["image_id"])) == (policy == "warn")
    assert counts["dropped_from_train"] == (1 if policy == "drop_from_train" else 0)
    assert len(out) == (16 if policy == "warn" else 15)


def test_no_leak_reads_no_leakage_found(tmp_path):
    clean = _predefined_manifest(tmp_path)
    df = pd.read_csv(clean, dtype=str, keep_default_na=False)
    df["cluster_id"] = ""
    df.to_csv(clean, index=False)
    base, data, cfg = parse_sections(repo_params(**{"split.method": "predefined", **EXPLICIT}),
                                     "base", "data", "split")
    split.run(base, data, cfg, clean, tmp_path / "embed", tmp_path / "split.csv",
              tmp_path / "split.json", leakage_csv=tmp_path / "leak.csv",
              leakage_html=tmp_path / "leak.html")
    assert "No leakage found" in (tmp_path / "leak.html").read_text()
    assert pd.read_csv(tmp_path / "leak.csv").empty


# ------------------------------------------------------------- a user-supplied test folder


def _textured(seed: int, size: int = 192) -> np.ndarray:
    """(size, size, 3) uint8: two coloured gratings and a few blurred shapes, distinct per
    seed. Photo-like enough that JPEG and resizing barely move the backbone's features."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3)) + rng.uniform(60, 190, 3)
    for _ in range(2):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img += wave[..., None] * rng.uniform(-60, 60, 3)
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(4):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 8, size // 3, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
    return np.asarray(picture.filter(ImageFilter.GaussianBlur(size / 96)))


# (copy, original, JPEG quality or 0 for lossless, scale): the copies a user's val/test
# folders hold of training images, and one copy inside train
PLANTED = [("test/c0/copy_jpeg.jpg", "train/c0/train_0.png", 60, 1.0),
           ("test/c1/copy_jpeg.jpg", "train/c1/train_1.png", 60, 1.0),
           ("test/c2/copy_small.png", "train/c2/train_2.png", 0, 0.75),
           ("val/c0/copy_small.png", "train/c0/train_3.png", 0, 0.6),
           ("test/c1/copy_exact.bmp", "train/c1/train_4.png", 0, 1.0),
           ("test/c2/copy_small_jpeg.jpg", "train/c2/train_5.png", 60, 0.75),
           ("train/c0/train_0_again.png", "train/c0/train_0.png", 0, 0.8)]
# the leaking pairs (val/test path, train path): train_0 is in train twice
LEAKING = {(c, o) for c, o, _, _ in PLANTED if not c.startswith("train/")} | {
    ("test/c0/copy_jpeg.jpg", "train/c0/train_0_again.png")}


@pytest.fixture(scope="module")
def leaky_folder(tmp_path_factory):
    """A train/ val/ test/ tree with planted copies, through the real prepare and embed."""
    work = tmp_path_factory.mktemp("leaky")
    root = work / "images"
    seed = 0
    for name, n in (("train", 8), ("val", 2), ("test", 3)):
        for c in range(3):
            (root / name / f"c{c}").mkdir(parents=True)
            for i in range(n):
                seed += 1
                Image.fromarray(_textured(seed)).save(root / name / f"c{c}" / f"{name}_{i}.png")
    for copy, original, quality, scale in PLANTED:
        img = Image.open(root / original)
        if scale != 1.0:
            img = img.resize((int(img.width * scale),) * 2, Image.Resampling.BILINEAR)
        img.save(root / copy, **({"quality": quality} if quality else {}))
    data, embed_cfg = parse_sections(repo_params(**_folder(work), **{"embed.image_size": 64}),
                                     "data", "embed")
    prepare.run(data, work / "prepared.csv")
    embed.run(data, embed_cfg, work / "prepared.csv", work / "embed")
    return work


def _folder(work):
    return {"data.source": "folder", "data.root": str(work / "images")}


def _clean(work, tmp_path, **overrides):
    data, cfg = parse_sections(repo_params(**_folder(work), **overrides), "data", "clean")
    return clean.run(data, cfg, work / "prepared.csv", work / "embed", tmp_path / "clean.csv",
                     tmp_path / "clean.json", decisions=tmp_path / "none.csv",
                     review_out=tmp_path / "review.csv", review_html=tmp_path / "review.html")


def _split(work, tmp_path, policy):
    base, data, cfg = parse_sections(repo_params(**_folder(work), **{
        "split.method": "predefined", "split.on_leakage": policy, **EXPLICIT}),
        "base", "data", "split")
    return split.run(base, data, cfg, tmp_path / "clean.csv", work / "embed",
                     tmp_path / "split.csv", tmp_path / "split.json",
                     leakage_csv=tmp_path / "leak.csv", leakage_html=tmp_path / "leak.html")


# the labels of random textures mean nothing: the label check flags many, let it pass
GATES = {f"clean.max_rate.{k}": 1.0 for k in ("unreadable", "exact_duplicate",
         "near_duplicate", "conflicting_labels", "label_issue", "outlier")}
FLAG = {"clean.exact_duplicates": "flag", "clean.near_duplicates": "flag", **GATES}


def test_audit_finds_every_copy_in_a_user_supplied_test_folder(leaky_folder, tmp_path):
    work = leaky_folder
    # clean only clusters the closest copies (resized, identical): the JPEG ones it
    # leaves apart, so the audit must find those by its own search
    cleaned = _clean(work, tmp_path, **FLAG, **{"clean.near_duplicate_threshold": 0.995})
    out = _split(work, tmp_path, "warn")
    cluster = dict(zip(cleaned["path"], cleaned["cluster_id"]))
    together = {pair for pair in LEAKING if cluster[pair[0]] and
                cluster[pair[0]] == cluster[pair[1]]}
    assert together and together != LEAKING  # both cases are there
    assert len(out) == len(cleaned)  # warn: nothing removed

    pairs = pd.read_csv(tmp_path / "leak.csv", dtype=str, keep_default_na=False)
    assert set(zip(pairs["path"], pairs["train_path"])) == LEAKING  # every copy, nothing else
    assert len(pairs) == len(LEAKING)  # each pair once
    kinds = dict(zip(pairs["path"], pairs["kind"]))
    assert kinds.pop("test/c1/copy_exact.bmp") == "exact_duplicate"
    assert set(kinds.values()) == {"near_duplicate"}
    assert (pairs["similarity"].astype(float) >= 0.98).all()  # the default threshold
    counts = json.loads((tmp_path / "all" / "split.json").read_text())
    assert (counts["leak_exact_duplicate"], counts["leak_near_duplicate"],
            counts["leak_duplicate_cluster"]) == (1, len(LEAKING) - 1, 0)
    # dvc exp show's column: every leaking pair found, all kinds
    assert json.loads((tmp_path / "split.json").read_text()) == {"leaks": len(LEAKING)}
    page = (tmp_path / "leak.html").read_text()
    assert "<h2>exact_duplicate (1)</h2>" in page
    assert f"<h2>near_duplicate ({len(LEAKING) - 1})</h2>" in page
    assert page.count("data:image/png;base64,") == 2 * len(LEAKING)
    assert all(path in page for pair in LEAKING for path in pair)

    dropped = _split(work, tmp_path, "drop_from_train")
    removed = set(cleaned["path"]) - set(dropped["path"])
    assert removed == {train for _, train in LEAKING}  # exactly the train-side copies
    counts = json.loads((tmp_path / "all" / "split.json").read_text())
    assert counts["dropped_from_train"] == len({train for _, train in LEAKING})

    with pytest.raises(PipelineError, match=r"(?s)the split leaks \(7 rows.*leak\.html"):
        _split(work, tmp_path, "fail")


def test_clean_default_policies_drop_the_train_side_of_copies_of_a_fixed_test_set(
        leaky_folder, tmp_path):
    # issue 12: the source's val/ and test/ are a fixed evaluation set. In a duplicate
    # cluster that straddles train and val/test, clean's drop policies remove the train
    # members and keep every val/test member (flagged); before, the smallest image_id
    # was kept whatever its split, which sometimes removed the test-side copy
    work = leaky_folder
    cleaned = _clean(work, tmp_path, **GATES)
    out = _split(work, tmp_path, "fail")  # the audit passes
    kept = set(out["path"])
    fixed = set(cleaned.loc[cleaned["split"] != "train", "path"])
    assert fixed <= kept  # every (readable) val/test image goes through
    dropped_train = set()
    for copy_path, original, _, _ in PLANTED:
        members = cleaned[cleaned["cluster_id"] == cleaned.set_index("path").at[
            original, "cluster_id"]]
        assert copy_path in set(members["path"])
        in_fixed = members["split"] != "train"
        assert members.loc[in_fixed, "keep"].all()
        assert members.loc[in_fixed, "issues"].str.contains("duplicate").all()
        if in_fixed.any():
            assert not members.loc[~in_fixed, "keep"].any()
            dropped_train |= set(members.loc[~in_fixed, "path"])
        else:  # a cluster inside train keeps its smallest image_id
            assert set(members.loc[members["keep"], "path"]) == {
                members.sort_values("image_id")["path"].iloc[0]}
        assert len(kept & set(members["path"])) == max(1, int(in_fixed.sum()))
    counts = json.loads((tmp_path / "all" / "clean.json").read_text())
    assert counts["train_copies_of_eval_dropped"] == len(dropped_train) > 0
    assert counts["fixed_eval_images"] == counts["fixed_eval_kept"] == len(fixed)


DROP_ALL = {"clean.exact_duplicates": "drop", "clean.near_duplicates": "drop",
            "clean.conflicting_labels": "drop", "clean.label_issues": "drop",
            "clean.outliers": "drop", "clean.outlier_threshold": 0.36, **GATES}


def test_no_val_or_test_row_is_ever_dropped_with_a_predefined_split(leaky_folder, tmp_path,
                                                                     capsys):
    # every policy at drop, an outlier threshold that flags many: clean flags val/test
    # rows and keeps them, split's default (auto: drop_from_train) removes train copies
    work = leaky_folder
    cleaned = _clean(work, tmp_path, **DROP_ALL)
    fixed = cleaned[cleaned["split"] != "train"]
    assert fixed["keep"].all()
    flagged = fixed[fixed["issues"] != ""]
    for issue in ("label_issue", "outlier", "near_duplicate"):
        assert flagged["issues"].str.contains(issue).any(), issue  # flagged, kept
    train = cleaned[cleaned["split"] == "train"]
    assert not train.loc[train["issues"] != "", "keep"].any()  # the train side goes
    base, data, cfg = parse_sections(repo_params(**_folder(work), **{
        "split.method": "predefined"}), "base", "data", "split")
    assert cfg.on_leakage == "auto" and cfg.leakage_policy == "drop_from_train"
    out = split.run(base, data, cfg, tmp_path / "clean.csv", work / "embed",
                    tmp_path / "split.csv", tmp_path / "split.json",
                    leakage_csv=tmp_path / "leak.csv", leakage_html=tmp_path / "leak.html")
    given = dict(zip(fixed["image_id"], fixed["split"]))
    got = dict(zip(out["image_id"], out["split"]))
    assert {i: got.get(i) for i in given} == given  # each in the split it came in
    assert "layout train/" in capsys.readouterr().out
