"""A text project through every stage of `dvc repro` (a tiny encoder, a few dozen texts):
prepare resolves the modality, embed hashes the normalised texts and calibrates near
copies on edited copies, clean finds copies and conflicts, split keeps them together,
cache stores token ids, train, evaluate, export and report run on them."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.modality.itemkinds import resolve_modality

from . import test_text_modality as texts
from .conftest import (
    HALF_SPLIT,
    PROJECT_FILES,
    commit_project,
    kill_mid_phase,
    repo_params,
    scratch_project,
    sh,
)

tokenizer = texts.tokenizer  # the module-scoped fixtures of the text tests, reused
tiny_encoder = texts.tiny_encoder

WORDS = {"sport": "goal match team league cup striker keeper season final coach",
         "money": "bank shares market profit price trade bonds rates fund deal",
         "tech": "chip phone software data server code cloud robot screen app"}


def _write_texts(root, per_class: int, seed: int = 0) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    for label, words in WORDS.items():
        vocab = words.split()
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            text = " ".join(rng.choice(vocab, size=12)) + ". " + " ".join(
                rng.choice(vocab, size=10)) + "."
            (root / label / f"{i:02d}.txt").write_text(text)


def test_auto_modality_follows_the_files_and_a_text_column():
    files = pd.DataFrame({"path": ["a/1.txt", "a/2.txt", "b/3.txt"]})
    assert resolve_modality("auto", files) == ("text", "auto: 3 of 3 files are texts")
    images = pd.DataFrame({"path": ["a/1.png", "b/2.JPG"] * 10 + ["b/notes.txt"]})
    assert resolve_modality("auto", images) == ("image", "auto: 20 of 21 files are images")
    with pytest.raises(PipelineError, match="mixes 7 text files"):
        resolve_modality("auto", pd.DataFrame({"path": ["a/1.png", "b/2.txt"] * 7}))
    inline = pd.DataFrame({"path": ["m.csv#1"], "text": ["hello"]})
    assert resolve_modality("auto", inline)[0] == "text"
    assert resolve_modality("text", pd.DataFrame({"path": ["a/1.png"]}))[0] == "text"


@pytest.mark.slow
def test_dvc_repro_runs_a_text_project_through_every_stage(tmp_path, tiny_encoder):
    work = scratch_project(tmp_path / "project",
                           files=tuple(f for f in PROJECT_FILES if f != ".gitignore"))
    _write_texts(work / "texts", per_class=12)
    copy = (work / "texts/tech/00.txt").read_text()
    (work / "texts/money/dup.txt").write_text(copy.upper() + "  ")  # a conflicting copy
    (work / "texts/sport/empty.txt").write_bytes(b"")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="texts")
    params["embed"].update(model=str(tiny_encoder), calibration_sample=8, batch_size=16)
    params["model"]["name"] = str(tiny_encoder)
    params["split"]["fractions"] = HALF_SPLIT
    params["train"].update(batch_size=8, phases=[
        {"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 1, "unfreeze": 1, "lr_mult": 0.5}])
    params["clean"]["max_rate"] = {k: 1.0 for k in params["clean"]["max_rate"]}
    commit_project(work, params)

    log = sh("dvc", "repro", cwd=work)
    assert "prepared 38 texts in 3 classes" in log and "data.modality: auto: 38 of 38" in log
    clean = pd.read_csv(work / "data/clean/manifest.csv", keep_default_na=False)
    flagged = dict(zip(clean["path"], clean["issues"]))
    assert flagged["sport/empty.txt"] == "unreadable"
    assert "conflicting_labels" in flagged["money/dup.txt"]  # same text, case and spaces aside
    assert "conflicting_labels" in flagged["tech/00.txt"]
    counts = json.loads((work / "metrics/all/clean.json").read_text())
    assert counts["near_duplicate_threshold_shingles"] != "off" or \
        counts["near_duplicate_threshold_embedding"] != "off"
    cache = json.loads((work / "data/cache/meta.json").read_text())
    assert cache["modality"] == "text" and cache["text"]["encoder"] == str(tiny_encoder)
    model = torch.load(work / "models/model.pt", weights_only=True)
    assert model["meta"]["preprocessing"]["modality"] == "text"
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    exported = json.loads((work / "models/model.json").read_text())
    assert exported["input_names"] == ["input_ids", "attention_mask"]
    report = (work / "reports/report.html").read_text()
    assert "texts in 3 classes" in report and "class='snip'" not in report
    assert 'class="snip"' in report  # texts shown where images show thumbnails
    review = (work / "data/clean/review.html").read_text()
    assert "Texts to review" in review and 'class="snip"' in review
    assert "Running stage" not in sh("dvc", "repro", cwd=work)


def test_init_recognises_a_text_folder_and_a_jsonl_manifest(tmp_path):
    from pipeline.cli.init_data import data_values, inspect_source, report_lines

    _write_texts(tmp_path / "texts", per_class=3)
    (tmp_path / "texts/tech/blank.txt").write_text("  \n")
    found = inspect_source(tmp_path / "texts")
    lines = "\n".join(report_lines(found))
    assert found.modality == "text" and "texts: words per text median 22" in lines
    assert "tech/blank.txt: whitespace only" in lines
    assert data_values(found, tmp_path)["modality"] == "text"
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"text": "a goal", "label": "sport"}\n{"text": "bank rates", '
                     '"label": "money"}\n')
    found = inspect_source(jsonl)
    assert found.source == "csv" and found.modality == "text" and found.words == [2, 2]


def _text_cache(folder, encoder, train_n: int):
    from pipeline.modality.text.cache import write_text_cache

    splits = {}
    for split, n in (("train", train_n), ("val", 4), ("test", 4)):
        corpus, labels = texts._corpus(n)
        splits[split] = (corpus, labels, [f"{split}{i}" for i in range(len(corpus))])
    write_text_cache(folder, splits, list(texts.TOPICS), model_name=str(encoder),
                     max_length=32)
    return folder


TEXT_PHASES = [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
               {"epochs": 3, "unfreeze": 1, "lr_mult": 1.0},  # on stored hidden states
               {"epochs": 1, "unfreeze": "all", "lr_mult": 0.5}]


@pytest.mark.slow
def test_a_killed_text_run_resumes_bit_identical(tmp_path, tiny_encoder):
    from .test_train import _project, _train_process, weights

    cache = _text_cache(tmp_path / "cache", tiny_encoder, train_n=40)
    settings = {"model.name": str(tiny_encoder), "model.weights": "default",
                "train.phases": TEXT_PHASES, "train.batch_size": 8}
    whole = _project(tmp_path / "whole", cache, **settings)
    done = _train_process(whole)
    out, _ = done.communicate(timeout=300)
    assert done.returncode == 0 and "stored hidden states" in out, out
    project = _project(tmp_path / "killed", cache, **settings)
    checkpoint = project / "checkpoints/train/last.pt"
    kill_mid_phase(_train_process(project), checkpoint, poll=0.02)
    resumed = _train_process(project)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming" in out, out
    a, b = weights(whole / "models/model.pt"), weights(project / "models/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_train_a_text_model_as_one(tmp_path, tiny_encoder):
    import shutil

    from .test_train import single_and_ddp_losses

    encoder = shutil.copytree(tiny_encoder, tmp_path / "encoder")  # without dropout: the
    config = json.loads((encoder / "config.json").read_text())  # same random draws
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(config))
    cache = _text_cache(tmp_path / "cache", encoder, train_n=32)
    losses = single_and_ddp_losses(tmp_path, cache, 29541, **{
        "model.name": str(encoder), "model.weights": "default", "train.batch_size": 8,
        "train.phases": [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
                         {"epochs": 2, "unfreeze": "all", "lr_mult": 0.5}],
        "model.drop_rate": 0.0})
    assert len(losses["ddp"]) == 3
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-4)


def test_a_fixed_text_test_set_with_copies_of_train_texts_fails_the_split(tmp_path,
                                                                          tiny_encoder):
    import numpy as np

    from pipeline.contracts.manifest import read_manifest
    from pipeline.stages import clean, embed, prepare, split

    root = tmp_path / "texts"
    rng = np.random.default_rng(0)
    for part, n in (("train", 8), ("val", 3), ("test", 3)):  # 40 words of 300 per class
        for label in WORDS:
            (root / part / label).mkdir(parents=True)
            for i in range(n):
                words = [f"{label}{k}" for k in rng.integers(0, 300, size=40)]
                (root / part / label / f"{i:02d}.txt").write_text(" ".join(words) + ".")
    source = (root / "train/money/04.txt").read_text()
    words = source.split()
    (root / "test/money/copy.txt").write_text(" ".join(words[:-2]) + "\n-- Sent from my phone")
    (root / "test/tech/same.txt").write_text((root / "train/tech/05.txt").read_text().upper())
    gates = {f"clean.max_rate.{k}": 1.0 for k in ("unreadable", "exact_duplicate",
             "near_duplicate", "conflicting_labels", "label_issue", "outlier")}
    params = repo_params(**{
        "data.source": "folder", "data.root": str(root), "embed.model": str(tiny_encoder),
        "embed.calibration_sample": 16, "clean.exact_duplicates": "flag",
        "clean.near_duplicates": "flag", "split.method": "predefined",
        "split.on_leakage": "fail", **gates})
    base, data, embed_cfg, clean_cfg, split_cfg = parse_sections(
        params, "base", "data", "embed", "clean", "split")
    prepare.run(data, tmp_path / "prepared.csv", ignore=tmp_path / ".dvcignore")
    embed.run_texts(data, embed_cfg, read_manifest(tmp_path / "prepared.csv"),
                    tmp_path / "embed", device="cpu")
    clean.run(data, clean_cfg, tmp_path / "prepared.csv", tmp_path / "embed",
              tmp_path / "clean.csv", tmp_path / "clean.json", decisions=tmp_path / "none.csv",
              review_out=tmp_path / "review.csv", review_html=tmp_path / "review.html",
              calibration=tmp_path / "calibration.json")
    with pytest.raises(PipelineError, match=r"the split leaks \(2 rows"):
        split.run(base, data, split_cfg, tmp_path / "clean.csv", tmp_path / "embed",
                  tmp_path / "split.csv", tmp_path / "split.json",
                  leakage_csv=tmp_path / "leak.csv", leakage_html=tmp_path / "leak.html",
                  calibration=tmp_path / "calibration.json")
    pairs = pd.read_csv(tmp_path / "leak.csv", keep_default_na=False)
    assert dict(zip(pairs["path"], pairs["kind"])) == {
        "test/money/copy.txt": "near_duplicate", "test/tech/same.txt": "exact_duplicate"}
    assert set(pairs["train_path"]) == {"train/money/04.txt", "train/tech/05.txt"}
    page = (tmp_path / "leak.html").read_text()
    assert page.count('class="snip"') == 4  # both texts of both pairs, as snippets
