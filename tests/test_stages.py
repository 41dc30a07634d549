"""The stage functions chained on tiny images: the cache is all that training reads."""

import hashlib
import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from pipeline import __main__ as cli
from pipeline.core.config import parse_sections
from pipeline.finetuning import training
from pipeline.finetuning.trainrun import train_model
from pipeline.scoring.evaluation import HEADLINE, evaluate_model
from pipeline.scoring.metrics import calibrate_temperature
from pipeline.stages import cache, clean, embed, prepare, split

from .conftest import REPO, repo_params, write_tree


def _recompute_with_sklearn(out, result):
    """Every number in eval.json and per_class.csv follows from the prediction files."""
    test = pd.read_csv(out / "predictions.csv", dtype={"label": str, "pred": str})
    val = pd.read_csv(out / "predictions_val.csv", dtype={"label": str, "pred": str})
    classes = [c[len("prob_"):] for c in test if c.startswith("prob_")]
    probs = test[[f"prob_{c}" for c in classes]].to_numpy()
    y = test["label"].map(classes.index).to_numpy()
    pred = probs.argmax(1)
    assert [classes[i] for i in pred] == list(test["pred"])
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "macro_f1": skm.f1_score(y, pred, average="macro"),
        "weighted_f1": skm.f1_score(y, pred, average="weighted"),
        "log_loss": skm.log_loss(y, probs / probs.sum(1, keepdims=True),
                                 labels=range(len(classes))),
        "test_images": len(y),
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=2e-6), key
    vy = val["label"].map(classes.index).to_numpy()
    temperature, _ = calibrate_temperature(vy, val[[f"prob_{c}" for c in classes]].to_numpy())
    assert result["temperature"] == pytest.approx(temperature, abs=2e-6)
    assert result["accuracy_ci_low"] <= result["accuracy"] <= result["accuracy_ci_high"]
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(len(classes)),
                                                     zero_division=0)
    table = pd.read_csv(out / "per_class.csv", dtype={"class": str})
    assert list(table["class"]) == classes
    for column, values in (("precision", p), ("recall", r), ("f1", f), ("support", s)):
        assert table[column].to_numpy() == pytest.approx(values, abs=2e-6), column


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_chain_with_views_trains_from_the_cache_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_tree(tmp_path / "images", classes=3, per_class=12, size=24)
    params = repo_params(**{
        "data.source": "folder", "data.root": str(root),
        "split.fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
        "cache.image_size": 32, "cache.views": 2, "train.batch_size": 8, "evaluate.tta": "flip",
        "train.hflip": True, "train.shift": 2,
        "train.phases": [{"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
                         {"epochs": 1, "unfreeze": "all", "lr_mult": 0.25}]})
    base, data, clean_cfg, split_cfg, cache_cfg, model_cfg, train_cfg, eval_cfg = parse_sections(
        params, "base", "data", "clean", "split", "cache", "model", "train", "evaluate")
    d = tmp_path / "data"
    prepare.run(data, d / "prepared.csv")
    (embed_cfg,) = parse_sections(repo_params(**{"embed.image_size": 32}), "embed")
    embed.run(data, embed_cfg, d / "prepared.csv", d / "embed")
    clean.run(data, clean_cfg, d / "prepared.csv", d / "embed", d / "clean.csv",
              d / "clean.json")
    split.run(base, data, split_cfg, d / "clean.csv", d / "embed", d / "split.csv",
              d / "split.json", leakage_csv=d / "leakage.csv", leakage_html=d / "leakage.html")
    cache.run(data, cache_cfg, d / "split.csv", d / "cache", embed_dir=d / "embed")
    first = _digest(d / "cache")
    assert {"train_view0_images.npy", "train_view1_images.npy"} <= set(first)
    assert first["train_view0_images.npy"] != first["train_view1_images.npy"]
    cache.run(data, cache_cfg, d / "split.csv", d / "cache", embed_dir=d / "embed")
    assert _digest(d / "cache") == first  # same params and seed: the same bytes

    kept = tmp_path / "kept"
    shutil.copytree(root, kept)  # for predicting outside the pipeline, below
    shutil.rmtree(root)  # training must not open a single image file
    seen = []
    real_batches = training.batches

    def spy(data, *args, **kwargs):
        seen.append(data.images.path.name)
        return real_batches(data, *args, **kwargs)

    monkeypatch.setattr(training, "batches", spy)  # the epoch runner's
    metrics = train_model(base, model_cfg, train_cfg, d / "cache", tmp_path / "model.pt",
                          tmp_path / "train.json", tmp_path / "curves", tmp_path / "ckpt")
    assert seen == ["train_view0_images.npy", "train_view1_images.npy",
                    "train_view0_images.npy"]  # epoch e reads view e mod K
    assert metrics["epochs"] == 3
    assert not any("second" in key for key in metrics)  # wall times: the run record only
    timings = json.loads((tmp_path / "all" / "run.json").read_text())
    assert timings["train_phase0_seconds"] > 0 and timings["train_phase1_images_per_second"] > 0
    # what dvc exp show displays: the headline only (train_seconds, the stage's whole time,
    # comes from run_stage: test_end_to_end), every number under all/
    assert "train_seconds" not in timings
    assert json.loads((tmp_path / "run.json").read_text()) == {}
    assert json.loads((tmp_path / "all" / "train.json").read_text()) == metrics
    assert json.loads((tmp_path / "train.json").read_text()) == {
        "best_epoch": metrics["best_epoch"], "best_val_accuracy": metrics["best_val_accuracy"]}
    out = tmp_path / "metrics"
    result = evaluate_model(base, eval_cfg, tmp_path / "model.pt", d / "cache", d / "split.csv",
                            out)
    assert json.loads((out / "all" / "eval.json").read_text()) == result
    headline = json.loads((out / "eval.json").read_text())
    assert list(headline) == list(HEADLINE)  # this order, left to right
    assert headline == {k: result[k] for k in HEADLINE}
    assert {"tta_accuracy", "tta_macro_f1"} <= set(result)
    _recompute_with_sklearn(out, result)
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert meta["preprocessing"]["image_size"] == 32

    # the predict command on the test files reproduces the evaluate stage's predictions
    expected = pd.read_csv(out / "predictions.csv", dtype={"label": str, "pred": str})
    files = [str(kept / p) for p in expected["path"]]
    cli.main(["predict", *files, str(kept / "c0" / "missing.png"), "--model",
              str(tmp_path / "model.pt"), "--out", str(tmp_path / "cli.csv"), "--top-k", "2"])
    got = pd.read_csv(tmp_path / "cli.csv", dtype=str, keep_default_na=False)
    assert list(got.columns) == ["path", "pred", "confidence", "top1_label", "top1_prob",
                                 "top2_label", "top2_prob", "error"]
    assert list(got["pred"][:-1]) == list(expected["pred"])
    confidence = expected[[c for c in expected if c.startswith("prob_")]].max(axis=1)
    assert got["confidence"][:-1].astype(float).to_numpy() == pytest.approx(
        confidence.to_numpy(), abs=1e-5)
    assert got["error"].iloc[-1] == "file not found" and got["pred"].iloc[-1] == ""

    # exports agree with PyTorch (the export command runs the stage's code); the ONNX one
    # runs without torch
    cli.main(["export", "--model", str(tmp_path / "model.pt"), "--cache", str(d / "cache"),
              "--out-dir", str(tmp_path / "export")])
    report = json.loads((tmp_path / "export/export.json").read_text())
    assert report["onnx_within_tolerance"] and report["onnx_argmax_disagreements"] == 0
    assert report["torchscript_max_prob_diff"] < 1e-4
    no_torch = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", no_torch, str(REPO / "scripts/onnx_predict.py"),
                           str(tmp_path / "export/model.onnx"),
                           str(tmp_path / "export/model.json"), *files],
                          capture_output=True, text=True, check=True)
    onnx_preds = [line.split(",")[1] for line in done.stdout.splitlines()[1:]]
    assert onnx_preds == list(expected["pred"])
