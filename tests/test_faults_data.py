"""Fault corpus, params and data: every bad input stops with one message naming its cause
(or is recorded with its reason), and no source file changes.

Each case builds its inputs under ``tmp_path/src`` (tiny generated files), runs the stage
code on them with outputs under ``tmp_path/out``, and returns what a user would read: the
error message, or the recorded outcome. ``{src}`` and ``{out}`` in the expected text are
those folders; ``*`` matches anything (content hashes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from pipeline.contracts import embedfiles
from pipeline.contracts.embedfiles import EmbedMeta
from pipeline.contracts.manifest import read_manifest, write_manifest
from pipeline.core.config import load_sections, parse_sections
from pipeline.core.errors import PipelineError
from pipeline.splitting import rules
from pipeline.stages import clean, embed, prepare

from .conftest import REPO, class_image, fault_outcome, matches, repo_params, tree_hash, write_tree

LOOSE = {f"clean.max_rate.{k}": 1.0 for k in ("unreadable", "exact_duplicate", "near_duplicate",
                                              "conflicting_labels", "label_issue", "outlier")}


# ----------------------------------------------------------------------------- helpers


def _params(src: Path, **overrides) -> Path:
    """A params.yaml under ``src`` (the repo's, with overrides); returns its path."""
    path = src / "params.yaml"
    path.write_text(yaml.safe_dump(repo_params(**overrides), sort_keys=False))
    return path


def _load(src: Path, **overrides) -> str:
    """What a stage start says about these params: its error, or "valid"."""
    load_sections("data", path=_params(src, **overrides))
    return "valid"


def _csv_data(src: Path, text: str | bytes, **overrides):
    """A class tree under src/images and a manifest src/manifest.csv with this content."""
    root = write_tree(src / "images", classes=2, per_class=3)
    manifest = src / "manifest.csv"
    if isinstance(text, bytes):
        manifest.write_bytes(text)
    else:
        manifest.write_text(text, encoding="utf-8")
    params = repo_params(**{"data.source": "csv", "data.root": str(root),
                            "data.manifest": str(manifest), **overrides})
    return parse_sections(params, "data")[0]


def _folder_data(root: Path):
    params = repo_params(**{"data.source": "folder", "data.root": str(root), **LOOSE,
                            "clean.near_duplicate_threshold": 0.999})
    return parse_sections(params, "data", "clean")


def _prepare_csv(src: Path, out: Path, text: str | bytes) -> str:
    df = prepare.run(_csv_data(src, text), out / "prepared.csv")
    return f"{len(df)} rows: " + ", ".join(f"{i} {p} {lab}" for i, p, lab in
                                          zip(df["image_id"], df["path"], df["label"]))


def _fake_embed(prepared: Path, embed_dir: Path) -> None:
    """The embed stage's files without a backbone: class-separated unit vectors (also
    as the thumbnails; the explicit near-copy threshold reads no other signal)."""
    df = read_manifest(prepared)
    rng = np.random.default_rng(0)
    labels = sorted(set(df["label"]))
    centres = rng.normal(size=(len(labels), 16)) * 4
    x = centres[[labels.index(v) for v in df["label"]]] + rng.normal(size=(len(df), 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(df)
    embedfiles.write(embed_dir, x.astype(np.float32), EmbedMeta(
        ids=list(df["image_id"]), valid=[True] * n, pixel_hash=[f"h{i}" for i in range(n)],
        error=[""] * n, model={}, image_size=32, notes=[""] * n))
    embedfiles.write_signals(embed_dir, {"thumbnail": x})  # what clean's k-NN vote reads


def _clean_with_decisions(src: Path, out: Path, decisions: Callable[[pd.DataFrame], str]
                          ) -> str:
    """prepare, a stand-in embed, then clean with a decisions file made from the ids."""
    root = write_tree(src / "images", classes=2, per_class=6)
    data, cfg = _folder_data(root)
    prepared = prepare.run(data, out / "prepared.csv")
    (src / "decisions.csv").write_text(decisions(prepared))
    _fake_embed(out / "prepared.csv", out / "embed")
    clean.run(data, cfg, out / "prepared.csv", out / "embed", out / "clean.csv",
              out / "clean.json", decisions=src / "decisions.csv",
              review_out=out / "review.csv", review_html=out / "review.html")
    return "clean ran"


def _split(src: Path, out: Path, rows: list[dict], **overrides) -> str:
    """split's assignment of a clean manifest made of ``rows`` (kept unless said)."""
    df = pd.DataFrame([{"image_id": f"{i:04d}", "path": f"{i}.png", "keep": True,
                        "cluster_id": "", **row} for i, row in enumerate(rows)])
    write_manifest(df, src / "clean.csv")
    (cfg,) = parse_sections(repo_params(**overrides), "split")
    cfg = rules.resolve_method(cfg, df)
    result, _ = rules.split_rows(src / "clean.csv", cfg, seed=0)
    return " ".join(f"{r.label}:{r.split}" for r in result.sort_values("image_id").itertuples())


def _days(labels_and_times: list[tuple[str, str]]) -> list[dict]:
    return [{"label": lab, "timestamp": t} for lab, t in labels_and_times]


def _two_classes_over(times: list[str]) -> list[dict]:
    return [{"label": f"c{i % 2}", "timestamp": t} for i, t in enumerate(times)]


def _weights(src: Path, kind: str) -> str:
    path = src / f"{kind}.pt"
    if kind == "code":  # a pickle whose loading would call os.system

        class Evil:
            def __reduce__(self):
                return (os.system, ("true",))

        torch.save({"w": Evil()}, path)
    else:
        torch.save({"w": torch.zeros(3)}, path)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[:200])
    return str(path)


# ----------------------------------------------------------------------------- cases

# name -> (run(src, out) -> outcome, expected outcome)
CASES: dict[str, tuple[Callable[[Path, Path], str], str]] = {
    # params, checked when any stage starts
    "fractions_sum_1.2": (
        lambda src, out: _load(src, **{"split.fractions.train": 0.9}),
        "split.fractions: train + val + test must be 1, got 0.9 + 0.15 + 0.15 = 1.2"),
    "cutoffs_reversed": (
        lambda src, out: _load(src, **{"split.cutoffs": ["2024-06-01", "2024-01-01"]}),
        "split.cutoffs = ['2024-06-01', '2024-01-01']: the val start must come before the "
        "test start (ascending dates: [val start, test start])"),
    "cutoffs_not_dates": (
        lambda src, out: _load(src, **{"split.cutoffs": ["2024-01-01", "soon"]}),
        "split.cutoffs = ['2024-01-01', 'soon']: 'soon' is not a date or time; use "
        "ISO-8601, e.g. 2024-01-31 or 2024-01-31T12:00:00Z"),
    "cutoffs_mixed_zones": (
        lambda src, out: _load(src, **{"split.cutoffs": ["2024-01-01T00:00:00Z",
                                                         "2024-01-01T06:00:00+05:00"]}),
        "valid"),
    "embed_model_unknown": (
        lambda src, out: _load(src, **{"embed.model": "nosuchnet"}),
        "embed.model = 'nosuchnet' is neither a timm nor a torchvision classification "
        "model."),
    "model_weights_missing": (
        lambda src, out: _load(src, **{"model.weights": str(src / "nope.pt")}),
        "model.weights = '{src}/nope.pt': no such file"),
    "model_weights_run_code": (
        lambda src, out: _load(src, **{"model.weights": _weights(src, "code")}),
        "model.weights: {src}/code.pt cannot be loaded safely: besides tensors it holds "
        "Python objects (posix.system) whose loading could run code. Convert it to "
        ".safetensors with a tool you trust and use that file"),
    "model_weights_truncated": (
        lambda src, out: _load(src, **{"model.weights": _weights(src, "truncated")}),
        "model.weights: {src}/truncated.pt is not a readable PyTorch file (truncated or "
        "corrupt: PytorchStreamReader failed reading zip archive: failed finding central "
        "directory)"),
    "model_weights_file_ok": (
        lambda src, out: _load(src, **{"model.weights": _weights(src, "ok")}), "valid"),
    "train_lr_not_a_number": (
        lambda src, out: _load(src, **{"train.lr": "fast"}),
        "train.lr = 'fast': expected a number"),
    "train_phase_unfreeze": (
        lambda src, out: _load(src, **{"train.phases": [{"epochs": 1, "unfreeze": -2}]}),
        "train.phases[0].unfreeze = -2: give head, all or a number of layer groups >= 0"),
    # CSV manifests
    "csv_empty_file": (
        lambda src, out: _prepare_csv(src, out, b""),
        "data.manifest = '{src}/manifest.csv' is empty: it needs a header line path,label "
        "(or text,label) and one line per item"),
    "csv_header_only": (
        lambda src, out: _prepare_csv(src, out, "path,label\n"),
        "data.manifest = '{src}/manifest.csv' has a header but no rows: zero items; add "
        "one line path,label per item"),
    "csv_binary_garbage": (
        lambda src, out: _prepare_csv(src, out, bytes(range(256)) * 4),
        "data.manifest = '{src}/manifest.csv' is not a readable CSV: Error tokenizing "
        "data. C error: Expected 1 fields in line 3, saw 2"),
    "csv_missing_label_column": (
        lambda src, out: _prepare_csv(src, out, "path\nc0/img_00.png\n"),
        "{src}/manifest.csv lacks column(s) label; it needs path,label (or text,label) and "
        "may have timestamp,group,split"),
    "csv_empty_label": (
        lambda src, out: _prepare_csv(src, out, "path,label\nc0/img_00.png,c0\n"
                                                "c1/img_00.png,\n"),
        "{src}/manifest.csv: row(s) 3 have an empty path or label"),
    "csv_bom": (
        lambda src, out: _prepare_csv(src, out, "\ufeffpath,label\nc0/img_00.png,c0\n"
                                                "c1/img_00.png,c1\n"),
        "2 rows: * c1/img_00.png c1, * c0/img_00.png c0"),
    "csv_duplicate_rows": (
        lambda src, out: _prepare_csv(src, out, "path,label\nc0/img_00.png,c0\n"
                                                "c0/img_00.png,c0\nc1/img_00.png,c1\n"),
        "3 rows: * c1/img_00.png c1, *[0-9a-f] c0/img_00.png c0, *-1 c0/img_00.png c0"),
    "csv_one_class": (
        lambda src, out: _prepare_csv(src, out, "path,label\nc0/img_00.png,c0\n"
                                                "c0/img_01.png,c0\n"),
        "data.manifest = '{src}/manifest.csv': only class 'c0' (2 images); a classifier "
        "needs images of at least two classes"),
    "folder_one_class": (
        lambda src, out: str(len(prepare.run(_folder_data(write_tree(
            src / "images", classes=1, per_class=3))[0], out / "p.csv"))),
        "data.root = '{src}/images': only class 'c0' (3 images); a classifier needs "
        "images of at least two classes"),
    # timestamps and the temporal split
    "timestamps_mixed_zones": (
        lambda src, out: _split(src, out, _days([
            ("c0", "2024-01-01T00:00:00Z"), ("c1", "2024-01-01T04:00:00+05:00"),  # 23:00 UTC
            ("c0", "2024-01-02"), ("c1", "2024-01-03 00:00"), ("c0", "2024-01-04T00:00Z"),
            ("c1", "2024-01-05T00:00:00+00:00"), ("c0", "2024-01-06"), ("c1", "2024-01-07"),
            ("c0", "2024-01-08"), ("c1", "2024-01-09")]),
            **{"split.method": "temporal", "split.fractions.train": 0.6,
               "split.fractions.val": 0.2, "split.fractions.test": 0.2}),
        "c0:train c1:train c0:train c1:train c0:train c1:train c0:val c1:val c0:test "
        "c1:test"),
    "timestamps_not_dates": (
        lambda src, out: _split(src, out, _two_classes_over(["2024-01-01", "yesterday"] * 5),
                                **{"split.method": "temporal"}),
        "timestamp has values that are not dates or times, e.g. ['yesterday', 'yesterday', "
        "'yesterday'] (use ISO-8601: 2024-01-31, 2024-01-31T12:00:00+05:00)"),
    "timestamps_equal_never_straddle": (
        lambda src, out: _split(src, out, _two_classes_over(
            ["2024-01-01"] * 6 + ["2024-02-01"] * 3 + ["2024-03-01"] * 3),
            **{"split.method": "temporal", "split.fractions.train": 0.6,
               "split.fractions.val": 0.2, "split.fractions.test": 0.2}),
        "c0:train c1:train c0:train c1:train c0:train c1:train c0:val c1:val c0:val c1:test "
        "c0:test c1:test"),
    # what survives cleaning, at split
    "split_one_class_kept": (
        lambda src, out: _split(src, out, [{"label": "c0"}] * 6 +
                                [{"label": "c1", "keep": False}] * 6),
        "{src}/clean.csv, kept rows: only class 'c0' (6 images); a classifier needs images "
        "of at least two classes"),
    "split_none_kept": (
        lambda src, out: _split(src, out, [{"label": "c0", "keep": False}] * 4),
        "{src}/clean.csv has no kept images to split"),
    "split_class_without_train_image": (
        lambda src, out: _split(src, out, [{"label": "a", "split": "train"}] * 4 +
                                [{"label": "a", "split": "test"}] * 2 +
                                [{"label": "b", "split": "test"}] * 2),
        "split.method = predefined: class 'b' has no image in train (2 images in all)"),
    # a person's decisions, and what clean keeps
    "decisions_same_image_twice": (
        lambda src, out: _clean_with_decisions(src, out, lambda df: (
            f"image_id,action\n{df['image_id'][0]},keep\n{df['image_id'][0]},drop\n")),
        "{src}/decisions.csv: image_id * has 2 decisions (lines 2, 3: keep, drop); keep "
        "one line per image"),
    "clean_keeps_nothing": (
        lambda src, out: _clean_with_decisions(src, out, lambda df: "image_id,action\n" + "".join(
            f"{i},drop\n" for i in df["image_id"])),
        "clean kept none of the 12 images (see {out}/review.html)"),
    "clean_keeps_one_class": (
        lambda src, out: _clean_with_decisions(src, out, lambda df: "image_id,action\n" + "".join(
            f"{i},drop\n" for i, lab in zip(df["image_id"], df["label"]) if lab == "c1")),
        "clean kept (see {out}/review.html): only class 'c0' (6 images); a classifier needs "
        "images of at least two classes"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault(case, tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo's data/
    run, expected = CASES[case]
    outcome = fault_outcome(run, src, out)
    expected = expected.format(src=src, out=out)
    assert matches(outcome, expected), f"\n got: {outcome}\nwant: {expected}"
    assert "\n" not in outcome  # one line
    before = tree_hash(src)
    # the same inputs again: the same outcome, and still no source file changed
    again = fault_outcome(run, src, out)
    assert again == outcome or case.startswith("model_weights")  # those rewrite their file
    assert tree_hash(src) == before


def test_empty_class_folders_and_frames_are_noted(tmp_path, monkeypatch, capsys):
    """A real embed: an animated GIF and a 3-page TIFF keep their first frame, an empty
    class folder is no class; the log, metrics/all/clean.json and the review page say so."""
    monkeypatch.chdir(tmp_path)
    root = write_tree(tmp_path / "src" / "images", classes=2, per_class=6)
    (root / "c2").mkdir()
    frames = [Image.fromarray(class_image(0, 40 + k)) for k in range(4)]
    frames[0].save(root / "c0" / "moving.gif", save_all=True, append_images=frames[1:])
    frames[0].save(root / "c1" / "pages.tif", save_all=True, append_images=frames[1:3])
    before = tree_hash(tmp_path / "src")
    data, cfg = _folder_data(root)
    (embed_cfg,) = parse_sections(repo_params(**{"embed.image_size": 32}), "embed")
    out = tmp_path / "out"
    prepare.run(data, out / "prepared.csv")
    embed.run(data, embed_cfg, out / "prepared.csv", out / "embed")
    clean.run(data, cfg, out / "prepared.csv", out / "embed", out / "clean.csv",
              out / "clean.json", decisions=out / "none.csv", review_out=out / "review.csv",
              review_html=out / "review.html")
    log = capsys.readouterr()
    notes = ["c0/moving.gif: 4 frames (animated or multi-page); only the first is used",
             "c1/pages.tif: 3 frames (animated or multi-page); only the first is used",
             "c2/: empty class folder, no class"]
    assert f"warning: class folder {root / 'c2'} is empty: it is no class" in log.err
    for note in notes:
        assert f"  note: {note}\n" in log.out
        assert f"<li>{note}</li>" in (out / "review.html").read_text()
    counts = json.loads((out / "all" / "clean.json").read_text())
    assert (counts["multi_frame"], counts["empty_class_folders"]) == (2, 1)
    assert tree_hash(tmp_path / "src") == before


def test_nothing_decodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "src" / "images"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        (root / label / "x.png").write_text("not an image")
    data, _ = _folder_data(root)
    (embed_cfg,) = parse_sections(repo_params(**{"embed.image_size": 32}), "embed")
    prepare.run(data, tmp_path / "prepared.csv")
    with pytest.raises(PipelineError) as exc:
        embed.run(data, embed_cfg, tmp_path / "prepared.csv", tmp_path / "embed")
    assert str(exc.value) == ("none of the 2 images could be decoded (e.g. a/x.png: not an "
                              "image, or a format Pillow cannot read); zero images to work with")


@pytest.mark.parametrize("setting, message", [
    ("split.fractions.train=0.9", "[prepare] error: split.fractions: train + val + test must "
                                  "be 1, got 0.9 + 0.15 + 0.15 = 1.2"),
    ("data.manifest=empty.csv", "[prepare] error: data.manifest = 'empty.csv' is empty: it "
                                "needs a header line path,label (or text,label) and one "
                                "line per item"),
])
def test_stage_prints_one_line_and_no_traceback(tmp_path, setting, message):
    """The stage as DVC runs it: exit code 2, the message alone on stderr."""
    key, value = setting.split("=")
    write_tree(tmp_path / "images", classes=2, per_class=2)
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(repo_params(**{
        "data.source": "csv", "data.root": "images", "data.manifest": "empty.csv",
        key: float(value) if value[0].isdigit() else value})))
    before = tree_hash(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.prepare"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [message]
    assert tree_hash(tmp_path) == before
