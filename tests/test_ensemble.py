"""Ensembles and k-fold cross-validation: folds, params rules, fold rows, the combination."""

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from pipeline.contracts.cachefiles import CacheMeta, fold_splits, write_meta
from pipeline.core import paths
from pipeline.core.config import (
    SECTIONS,
    check_members,
    check_params,
    load_sections,
    parse_sections,
)
from pipeline.core.errors import ParamsError, PipelineError, run_stage
from pipeline.params.ensemble import EnsembleConfig
from pipeline.scoring import ensembles
from pipeline.scoring.metrics import headline
from pipeline.splitting.assign import SplitError, assign_folds
from pipeline.stages import ensemble
from pipeline.stages.member import member_settings

from .conftest import REPO, repo_params

# ----------------------------------------------------------------------------- folds


def test_folds_are_stratified_and_keep_clusters_together():
    labels = [f"c{i % 3}" for i in range(60)]
    keys = [f"cluster{i // 6}" if i < 12 else f"img{i}" for i in range(60)]  # two 6-row clusters
    folds = assign_folds(labels, keys, k=4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    for key in ("cluster0", "cluster1"):
        assert len({f for f, k in zip(folds, keys) if k == key}) == 1
    per_class = Counter(zip(labels, folds))
    for c in ("c0", "c1", "c2"):  # 20 rows a class: 5 per fold, give or take a cluster
        assert all(2 <= per_class[(c, f)] <= 8 for f in range(4)), per_class


def test_folds_depend_on_data_and_seed_not_row_order():
    labels = [f"c{i % 2}" for i in range(40)]
    keys = [f"img{i:02d}" for i in range(40)]
    first = dict(zip(keys, assign_folds(labels, keys, k=5, seed=3)))
    order = np.random.default_rng(0).permutation(40)
    again = dict(zip([keys[i] for i in order],
                     assign_folds([labels[i] for i in order], [keys[i] for i in order], k=5,
                              seed=3)))
    assert first == again
    other = dict(zip(keys, assign_folds(labels, keys, k=5, seed=4)))
    assert other != first


def test_more_folds_than_units_is_an_error():
    with pytest.raises(SplitError, match="3 images .* cannot fill 5 folds"):
        assign_folds(["a", "b", "a"], ["x", "y", "z"], k=5, seed=0)


# ----------------------------------------------------------------------------- params


NONE = {"ensemble.seeds": [], "ensemble.combine": [], "split.folds": []}  # the defaults


SEEDS = {"ensemble.seeds": [0, 1], "ensemble.combine": ["seeds"]}


def _check(**overrides):
    params = repo_params(**{**NONE, **overrides})
    sections = dict(zip(SECTIONS, parse_sections(params, *SECTIONS)))
    check_members(sections)
    return sections


def test_default_params_train_no_member():
    sections = _check()
    assert sections["ensemble"] == EnsembleConfig(seeds=(), combine=())
    assert sections["split"].folds == ()


@pytest.mark.parametrize("overrides,message", [
    ({"ensemble.seeds": [0, 1, 2]}, r"ensemble\.seeds = \[0, 1, 2\] but ensemble\.combine "
                                    r"lacks 'seeds'"),
    ({"ensemble.combine": ["seeds"]}, r"ensemble\.combine names 'seeds' but ensemble\.seeds "
                                      r"is \[\]"),
    ({"split.folds": [0, 1, 2]}, r"split\.folds = \[0, 1, 2\] but ensemble\.combine lacks"),
    ({"split.folds": [0, 1], "ensemble.combine": ["folds"], "cache.views": 2},
     r"cache\.views = 2 has augmented views of train only"),
    ({"ensemble.combine": ["bagging"]}, r"'bagging' is not allowed; choose one of: seeds, folds"),
    ({"ensemble.seeds": [1, 1], "ensemble.combine": ["seeds"]}, r"names an item twice"),
    ({"split.folds": [1, 2]}, r"split\.folds = \[1, 2\]: give \[\] or the fold numbers 0 to k-1"),
    ({"split.folds": [0]}, r"k >= 2"),
    ({"split.folds": [0, 1], "split.method": "temporal"}, r"split\.method temporal"),
    # a member's own settings: one of ensemble.seeds, valid keys and values, no seed
    ({**SEEDS, "members.train": {2: {"lr": 0.01}}},
     r"members\.train\.2: 2 is no seed in ensemble\.seeds = \[0, 1\]"),
    ({**SEEDS, "members.train": {1: {"learning_rate": 0.01}}},
     r"unknown key 'members\.train\.1\.learning_rate'"),
    ({**SEEDS, "members.train": {1: {"lr": -1}}}, r"members\.train\.1\.lr = -1"),
    ({**SEEDS, "members.train": {1: {"phases": [{"epochs": 1, "unfreeze": "sideways"}]}}},
     r"members\.train\.1\.phases\[0\]\.unfreeze"),
    ({**SEEDS, "members.train": {1: {"min_lr": 0.001, "schedule": "step"}}},
     r"members\.train\.1: train\.min_lr and train\.cosine_epochs shape the cosine"),
    ({**SEEDS, "members.train": {1: {"seed": 5}}}, r"members\.train\.1\.seed: a member's"),
    ({**SEEDS, "members.model": {1: {"drop_rate": 2.0}}}, r"members\.model\.1\.drop_rate"),
    ({**SEEDS, "members.train": {1: "fast"}}, r"members\.train\.1 = 'fast': expected a mapping"),
])
def test_member_lists_and_their_combination_are_checked(overrides, message):
    with pytest.raises(ParamsError, match=message):
        _check(**overrides)


def test_a_member_trains_with_its_own_settings_and_the_rest_with_the_sections():
    sections = _check(**{**SEEDS, "members.train": {"1": {"label_smoothing": 0.0, "lr": "4e-3"}},
                         "members.model": {0: {"drop_rate": 0.3}}})
    train, model = sections["train"], sections["model"]
    own = {s: member_settings(model, train, sections["members"], s) for s in (0, 1)}
    assert own[0] == (dataclasses.replace(model, drop_rate=0.3),
                      dataclasses.replace(train, seed=0))
    assert own[1] == (model, dataclasses.replace(train, seed=1, label_smoothing=0.0, lr=4e-3))
    assert train.label_smoothing == 0.1  # the sections themselves are left alone


def test_a_members_backbone_is_checked_before_any_work():
    params = repo_params(**{**NONE, **SEEDS, "members.model": {1: {"name": "resnet_5"}}})
    with pytest.raises(PipelineError, match=r"members\.model\.1: model\.name = 'resnet_5'"):
        check_params(params)


def test_the_documented_set_params_give_a_member_its_own_setting(tmp_path):
    # the `dvc exp run -S ...` of docs/recipes.md's hyper-ensemble, applied by DVC's own
    # override code to the repo's params.yaml
    from dvc.utils.hydra import apply_overrides

    doc = (REPO / "docs" / "recipes.md").read_text()
    command = doc[doc.index("<!-- recipe: hyper-ensemble -->"):].split("```bash\n")[1]
    overrides = re.findall(r"-S '([^']+)'", command.split("```")[0])
    assert any(o.startswith("++members.train=") for o in overrides), overrides
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(str(path), overrides)
    model, train, members = load_sections("model", "train", "members", path=path)
    assert member_settings(model, train, members, 1)[1].label_smoothing == 0.0
    assert member_settings(model, train, members, 2)[1] == dataclasses.replace(train, seed=2)


def test_both_kinds_together_are_accepted():
    sections = _check(**{"ensemble.seeds": [0, 1], "split.folds": [0, 1, 2],
                         "ensemble.combine": ["seeds", "folds"]})
    assert sections["split"].folds == (0, 1, 2)


def test_a_matrix_stage_takes_its_item_and_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the run record goes to metrics/all/run.json here
    seen = []

    def main(item):
        seen.append(item)

    run_stage("member", main, argv=["3"], item="seed")
    assert seen == [3]
    assert "member@3_seconds" in json.loads((tmp_path / "metrics/all/run.json").read_text())
    with pytest.raises(SystemExit):
        run_stage("member", main, argv=["3", "4"], item="seed")
    with pytest.raises(SystemExit):
        run_stage("ensemble", main, argv=["bagging"], item="kind", choices=("seeds", "folds"))
    assert "invalid choice: 'bagging'" in capsys.readouterr().err
    run_stage("ensemble", main, argv=["folds"], item="kind", choices=("seeds", "folds"))
    assert seen == [3, "folds"]


# ----------------------------------------------------------------------------- fold rows


def test_fold_rows_join_train_and_val_and_hold_one_fold_out(tmp_path):
    # train rows 0..5 and val rows 0..3, each image filled with its own number
    ids = {"train": [f"t{i}" for i in range(6)], "val": [f"v{i}" for i in range(4)],
           "test": []}
    for split, names in ids.items():
        images = np.stack([np.full((4, 4, 3), 10 * (split == "val") + i, np.uint8)
                           for i in range(len(names))]) if names else np.zeros((0, 4, 4, 3),
                                                                                np.uint8)
        np.save(tmp_path / f"{split}_images.npy", images)
        np.save(tmp_path / f"{split}_labels.npy", np.arange(len(names)) % 2)
    meta = CacheMeta(classes=["a", "b"], image_size=4, fit="crop", views=0, ids=ids)
    write_meta(tmp_path, meta)
    folds = {"t0": 0, "t1": 1, "t2": 0, "t3": 1, "t4": 0, "t5": 1, "v0": 1, "v1": 0, "v2": 1,
             "v3": 0}
    train, held = fold_splits(tmp_path, meta, folds, 1)
    assert list(held.ids) == ["t1", "t3", "t5", "v0", "v2"]
    assert list(train.ids) == ["t0", "t2", "t4", "v1", "v3"]
    assert list(held.labels) == [1, 1, 1, 0, 0]
    pixels = held.images[np.array([4, 0, 3])][:, 0, 0, 0]
    assert list(pixels) == [12, 1, 10]  # v2, t1, v0: rows of both files, in asked order
    assert held.images.shape == (5, 4, 4, 3) and len(train.images) == 5


# ----------------------------------------------------------------------------- combination


def _write_member(kind, item, labels, probs, split="test"):
    classes = ["a", "b", "c"]
    table = pd.DataFrame({"image_id": [f"i{n}" for n in range(len(labels))],
                          "path": [f"p{n}.png" for n in range(len(labels))],
                          "label": [classes[y] for y in labels],
                          "pred": [classes[k] for k in probs.argmax(1)]})
    for k, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, k]
    folder = paths.member_metrics(kind, item)
    folder.mkdir(parents=True, exist_ok=True)
    name = "predictions.csv" if split == "test" else "predictions_val.csv"
    table.to_csv(folder / name, index=False)


def _members(n_members, n=90, seed=0):
    """Labels and members that are right 70 % of the time, each on different rows, and
    confident either way: averaging them cancels their separate mistakes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    members = []
    for m in range(n_members):
        wrong = rng.random(n) < 0.3
        guess = np.where(wrong, (labels + 1 + m % 2) % 3, labels)
        probs = np.full((n, 3), 0.05)
        probs[np.arange(n), guess] = 0.9
        members.append(probs)
    return labels, members


def test_ensemble_averages_log_probabilities_and_beats_its_best_member(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels, members = _members(3, n=300)
    for seed, probs in zip([4, 7, 9], members):
        _write_member("seeds", seed, labels, probs)
        _write_member("seeds", seed, labels[::-1], probs[::-1], split="val")
    cfg = EnsembleConfig(seeds=(4, 7, 9), combine=("seeds",))
    out = ensemble.run(parse_sections(repo_params(), "base")[0],
                       parse_sections(repo_params(), "evaluate")[0], cfg, "seeds",
                       paths.SPLIT, paths.ENSEMBLE_DIR)
    geometric = np.exp(np.log(members).mean(0))
    average = geometric / geometric.sum(1, keepdims=True)  # ensemble.average: log_probs
    assert out["average"] == "log_probs"
    assert out["ensemble"]["log_loss"] == pytest.approx(headline(labels, average)["log_loss"],
                                                        abs=1e-6)
    assert out["members"] == 3 and set(out["member"]) == {"4", "7", "9"}
    best = out["member"][str(out["best_member"])]  # picked on val
    assert best["val_log_loss"] == min(m["val_log_loss"] for m in out["member"].values())
    assert out["log_loss_gain"] == pytest.approx(best["log_loss"] - out["ensemble"]["log_loss"],
                                                 abs=1e-5)
    assert out["log_loss_gain_ci_low"] > 0  # planted: the ensemble is clearly better
    best_test = min(out["member"].values(), key=lambda s: s["log_loss"])
    assert out["log_loss_gain_test_best"] == pytest.approx(
        best_test["log_loss"] - out["ensemble"]["log_loss"], abs=1e-5)
    for scores in [out["ensemble"], *out["member"].values()]:
        for name in ("accuracy", "log_loss"):
            assert scores[f"{name}_ci_low"] <= scores[name] <= scores[f"{name}_ci_high"]
    # after temperature scaling on val, too (the same confident mistakes: T > 1)
    assert all(m["temperature"] > 1 for m in out["member"].values())
    assert out["ensemble"]["log_loss_calibrated"] < best["log_loss_calibrated"] < best["log_loss"]
    assert (out["calibrated_log_loss_gain_ci_low"] <= out["calibrated_log_loss_gain"]
            <= out["calibrated_log_loss_gain_ci_high"])
    written = json.loads((tmp_path / "metrics/ensemble/seeds.json").read_text())
    assert written == out
    table = pd.read_csv(tmp_path / "metrics/ensemble/seeds_predictions.csv")
    assert np.allclose(table[["prob_a", "prob_b", "prob_c"]].to_numpy(), average)


def test_one_member_better_than_the_rest_shows_no_gain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels, members = _members(2)
    perfect = np.full((len(labels), 3), 0.01)
    perfect[np.arange(len(labels)), labels] = 0.98
    for seed, probs in enumerate([perfect, *members]):
        _write_member("seeds", seed, labels, probs)
        _write_member("seeds", seed, labels, probs, split="val")
    for rule in ("log_probs", "probs"):
        out, _ = ensembles.combine("seeds", [0, 1, 2], rule=rule, bootstrap=200, seed=0)
        assert out["best_member"] == out["best_member_test"] == 0
        assert out["log_loss_gain"] < 0 and out["calibrated_log_loss_gain"] < 0


def test_probs_rule_is_the_mean_and_log_probs_the_normalised_geometric_mean():
    probs = np.array([[[0.9, 0.1], [0.5, 0.5]], [[0.5, 0.5], [0.2, 0.8]]])  # (M=2, N=2, C=2)
    assert np.allclose(ensembles.average(probs, "probs"), [[0.7, 0.3], [0.35, 0.65]])
    geometric = np.sqrt(probs[0] * probs[1])
    assert np.allclose(ensembles.average(probs, "log_probs"),
                       geometric / geometric.sum(1, keepdims=True))
    # members that agree: the geometric mean keeps their confidence, the mean too
    agree = np.array([[[0.9, 0.1]], [[0.9, 0.1]]])
    assert np.allclose(ensembles.average(agree, "log_probs"), [[0.9, 0.1]])


def test_cross_validation_reports_each_fold_and_the_spread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels, members = _members(3, n=60)
    held_acc = []
    for fold, probs in enumerate(members):
        _write_member("folds", fold, labels, probs)
        rows = slice(20 * fold, 20 * fold + 20)  # the fold's held-out rows
        _write_member("folds", fold, labels[rows], probs[rows], split="val")
        held_acc.append((probs[rows].argmax(1) == labels[rows]).mean())
    manifest = pd.DataFrame({"image_id": [f"x{i}" for i in range(7)],
                             "fold": [0, 1, 2, 0, 1, 2, -1]})
    manifest.to_csv("split.csv", index=False)
    cfg = EnsembleConfig(seeds=(), combine=("folds",))
    out = ensemble.run(parse_sections(repo_params(), "base")[0],
                       parse_sections(repo_params(), "evaluate")[0], cfg, "folds",
                       tmp_path / "split.csv", paths.ENSEMBLE_DIR)
    assert out["members"] == 3
    assert out["cv_accuracy_mean"] == pytest.approx(np.mean(held_acc), abs=1e-6)
    assert out["cv_accuracy_std"] == pytest.approx(np.std(held_acc, ddof=1), abs=1e-6)
    assert out["cv_fold_accuracy"] == {str(k): pytest.approx(a, abs=1e-6)
                                       for k, a in enumerate(held_acc)}
    assert out["oof_images"] == 60
    assert out["oof_accuracy_ci_low"] <= out["oof_accuracy"] <= out["oof_accuracy_ci_high"]


def test_members_scored_on_other_images_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels, members = _members(2)
    _write_member("seeds", 0, labels, members[0])
    _write_member("seeds", 1, labels[:-1], members[1][:-1])
    with pytest.raises(Exception, match="seeds member 1 was scored on other images"):
        ensembles.combine("seeds", [0, 1], bootstrap=100, seed=0)
