"""Fine-tuning recipes as params (issue 15): explicit learning rates per named group,
per-phase layer decay, unfreezing by name, gradual unfreezing, early stopping of the run,
class weights and a class-balanced sampler. On the tiny test model, whose layer groups
are conv_stem+bn1, blocks.0 ... blocks.3, blocks.4+conv_head+bn2 and head."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.contracts.cachefiles import bootstrap_rows, open_split, read_meta, take_rows
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.finetuning.backbones import create_model
from pipeline.finetuning.engine import batch_indices
from pipeline.finetuning.finetune import check_phases, expand_gradual, group_lrs
from pipeline.finetuning.models import layer_groups, set_trainable
from pipeline.finetuning.training import class_weights, make_loss, sample_weights
from pipeline.params.model import ModelConfig

from .conftest import class_image
from .test_train import sections, train_in, weights, write_cache

NAMES = ["conv_stem+bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3",
         "blocks.4+conv_head+bn2", "head"]
TOP = "blocks.4+conv_head+bn2"


def tiny_groups():
    model, _, _ = create_model(ModelConfig("timm:test_efficientnet", "none", 0.0), 3)
    return model, layer_groups(model)


def curve(tmp: Path, name: str) -> list[float]:
    """One dvclive curve's values, one per epoch."""
    rows = (tmp / "curves/plots/metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[-1]) for r in rows]


def test_explicit_lrs_and_per_phase_layer_decay_set_each_group():
    _, _, cfg = sections(**{"train.lr": 0.1, "train.layer_decay": 0.8, "train.phases": [
        {"epochs": 1, "unfreeze": 2, "lrs": {TOP: 1e-3, "head": 2e-3, "default": 1e-4}},
        {"epochs": 1, "unfreeze": "all", "lrs": {"head": 1e-2}},
        {"epochs": 1, "unfreeze": 2, "layer_decay": 0.5}]})
    _, groups = tiny_groups()
    assert [g.name for g in groups] == NAMES
    trainable = check_phases(cfg, groups)
    explicit, partial, decayed = (group_lrs(cfg, p, NAMES, t)
                                  for p, t in zip(cfg.phases, trainable))
    assert explicit == [0, 0, 0, 0, 1e-4, 1e-3, 2e-3]  # frozen groups get 0
    # without default, unnamed groups keep the rule lr x layer_decay^depth
    assert partial == pytest.approx([0.1 * 0.8 ** (6 - i) for i in range(6)] + [1e-2])
    assert decayed == pytest.approx([0, 0, 0, 0, 0.025, 0.05, 0.1])  # the phase's decay


def test_explicit_lrs_and_named_groups_train_at_the_right_epochs(tmp_path):
    cache = write_cache(tmp_path / "cache", train_n=24)
    phases = [{"epochs": 1, "unfreeze": "head", "lrs": {"head": 1e-3}},
              {"epochs": 1, "unfreeze": ["blocks.1"], "lrs": {"blocks.1": 1e-4, "head": 1e-3}},
              {"epochs": 1, "unfreeze": "all", "lrs": {"default": 1e-5}}]
    train_in(tmp_path, cache, **{"train.phases": phases, "train.schedule": "constant",
                                 "train.warmup_epochs": 0})
    lrs = {name: curve(tmp_path, f"lr/{i:02d}_{name}") for i, name in enumerate(NAMES)}
    assert lrs["head"] == pytest.approx([1e-3, 1e-3, 1e-5])
    assert lrs["blocks.1"] == pytest.approx([0, 1e-4, 1e-5])
    assert lrs[TOP] == pytest.approx([0, 0, 1e-5])  # frozen while blocks.1 trains
    _, groups = tiny_groups()
    size = {g.name: g.size for g in groups}
    assert curve(tmp_path, "trainable_params") == [
        size["head"], size["head"] + size["blocks.1"], sum(size.values())]
    assert len(curve(tmp_path, "train_accuracy")) == 3  # train accuracy per epoch


def test_unfreeze_by_names_freezes_every_other_group():
    _, _, cfg = sections(**{"train.phases": [{"epochs": 1, "unfreeze": ["blocks.0", TOP]}]})
    model, groups = tiny_groups()
    [indices] = check_phases(cfg, groups)
    assert indices == (1, 5, 6)  # the named groups and the head
    set_trainable(model, groups, indices)
    trains = {n for i in indices for n in groups[i].params}
    assert trains and all(p.requires_grad == (n in trains)
                          for n, p in model.named_parameters())


def test_unknown_group_names_fail_before_training_listing_the_valid_ones():
    _, groups = tiny_groups()
    valid = re.escape(", ".join(NAMES))
    _, _, cfg = sections(**{"train.phases": [{"epochs": 1, "unfreeze": "head"},
                                             {"epochs": 1, "unfreeze": ["layer4"]}]})
    with pytest.raises(PipelineError, match=r"phases\[1\]\.unfreeze names 'layer4', which "
                                            r"is no layer group; valid names: " + valid):
        check_phases(cfg, groups)
    _, _, cfg = sections(**{"train.phases": [{"epochs": 1, "unfreeze": "all",
                                              "lrs": {"fc": 1e-3, "default": 1e-4}}]})
    with pytest.raises(PipelineError, match=r"phases\[0\]\.lrs names 'fc'.*valid names: "
                                            r"default, " + valid):
        check_phases(cfg, groups)
    for phase, message in (
            ({"epochs": 1, "unfreeze": "all", "lrs": {"head": -1}}, r"phases\[0\]\.lrs = "),
            ({"epochs": 1, "unfreeze": "all", "lrs": {"head": "fast"}},
             r"phases\[0\]\.lrs\.head = 'fast': expected a number"),
            ({"epochs": 1, "unfreeze": "all", "lrs": [1e-3]}, r"expected a mapping"),
            ({"epochs": 1, "unfreeze": []}, r"phases\[0\]\.unfreeze = \[\]"),
            ({"epochs": 4, "unfreeze": "gradual"}, r"phases\[0\]\.step_epochs = 0"),
            ({"epochs": 4, "unfreeze": 2, "step_epochs": 1}, r"only with unfreeze: gradual"),
            ({"epochs": 1, "unfreeze": "all", "layer_decay": 2}, r"layer_decay = 2")):
        with pytest.raises(ParamsError, match=message):
            sections(**{"train.phases": [phase]})
    with pytest.raises(ParamsError, match="patience_scope = 'epoch'.*phase, run"):
        sections(**{"train.patience_scope": "epoch"})


def test_gradual_unfreezing_expands_into_one_phase_per_step():
    _, groups = tiny_groups()
    _, _, cfg = sections(**{"train.phases": [
        {"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 5, "unfreeze": "gradual", "step_epochs": 1, "until": 3, "lr_mult": 0.5}]})
    expanded, notes = expand_gradual(cfg, groups)
    assert [(p.epochs, p.unfreeze, p.lr_mult) for p in expanded.phases] == [
        (2, "head", 5.0), (1, "head", 0.5), (1, 1, 0.5), (1, 2, 0.5), (2, 3, 0.5)]
    assert notes == ["train.phases[1] gradual: 1 x head, 1 x 1, 1 x 2, 2 x 3"]
    assert [len(t) for t in check_phases(expanded, groups)] == [1, 1, 2, 3, 4]
    _, _, to_all = sections(**{"train.phases": [
        {"epochs": 14, "unfreeze": "gradual", "step_epochs": 2}]})
    steps = expand_gradual(to_all, groups)[0].phases
    assert [p.unfreeze for p in steps] == ["head", 1, 2, 3, 4, 5, "all"]
    assert [p.epochs for p in steps] == [2] * 7
    _, _, short = sections(**{"train.phases": [
        {"epochs": 12, "unfreeze": "gradual", "step_epochs": 2}]})
    with pytest.raises(PipelineError, match=r"phases\[0\]\.epochs = 12 is too few.*more "
                                            r"than 12"):
        expand_gradual(short, groups)
    _, _, deep = sections(**{"train.phases": [
        {"epochs": 30, "unfreeze": "gradual", "step_epochs": 2, "until": 9}]})
    with pytest.raises(PipelineError, match=r"until = 9, but the model has only 6"):
        expand_gradual(deep, groups)
    _, _, plain = sections(**{"train.phases": [{"epochs": 1, "unfreeze": "all"}]})
    assert expand_gradual(plain, groups) == (plain, [])  # nothing to expand


def test_gradual_unfreezing_trains_the_expanded_phases(tmp_path):
    cache = write_cache(tmp_path / "cache", train_n=24)
    metrics = train_in(tmp_path, cache, **{"train.phases": [
        {"epochs": 3, "unfreeze": "gradual", "step_epochs": 1, "until": 2}]})
    assert metrics["epochs"] == 3
    assert curve(tmp_path, "phase") == [0, 1, 2]
    counts = curve(tmp_path, "trainable_params")
    assert counts[0] < counts[1] < counts[2]
    meta = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]
    assert [p["unfreeze"] for p in meta["params"]["train"]["phases"]] == ["head", 1, 2]


@pytest.mark.parametrize("scope", ["phase", "run"])
def test_patience_scope_run_ends_the_run_and_keeps_the_best_epoch(tmp_path, scope):
    cache = write_cache(tmp_path / "cache", train_n=24)
    phases = [{"epochs": 6, "unfreeze": "all", "lr_mult": 20.0},
              {"epochs": 2, "unfreeze": "head"}]
    metrics = train_in(tmp_path, cache, **{"train.phases": phases, "train.patience": 1,
                                           "train.patience_scope": scope,
                                           "train.schedule": "constant",
                                           "train.select": "best"})
    history = json.loads((tmp_path / "all" / "train.json").read_text())
    assert history == metrics
    phase_of_epoch = curve(tmp_path, "phase")
    if scope == "run":  # one epoch past the best, then nothing, not even phase 1
        assert metrics["epochs"] == metrics["best_epoch"] + 1 < 6
        assert set(phase_of_epoch) == {0}
    else:
        assert phase_of_epoch[-1] == 1  # the phase ended early, the next one ran
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["meta"]["best"]
    assert saved["epoch"] == metrics["best_epoch"]


def imbalanced_cache(cache: Path) -> Path:
    """write_cache's layout with 24, 6 and 3 train images of classes 0, 1 and 2."""
    write_cache(cache)
    labels = np.array([0] * 24 + [1] * 6 + [2] * 3)
    np.save(cache / "train_images.npy",
            np.stack([class_image(int(c), i, 32) for i, c in enumerate(labels)]))
    np.save(cache / "train_labels.npy", labels)
    meta = json.loads((cache / "meta.json").read_text())
    meta["ids"]["train"] = [f"train{i:03d}" for i in range(len(labels))]
    (cache / "meta.json").write_text(json.dumps(meta))
    return cache


def test_balanced_class_weights_and_sampler():
    _, _, cfg = sections(**{"train.class_weights": "balanced", "train.sampler": "balanced"})
    labels = np.array([0] * 24 + [1] * 6 + [2] * 3)
    weight = class_weights(cfg, labels, 4)  # class 3 has no train image
    assert weight.tolist() == pytest.approx([33 / 72, 33 / 18, 33 / 9, 1.0])
    assert class_weights(sections()[2], labels, 3) is None  # none by default
    generator = torch.Generator().manual_seed(0)
    drawn = np.concatenate([batch for _ in range(300) for batch in batch_indices(
        len(labels), 8, generator=generator, weights=sample_weights(cfg, labels))])
    share = np.bincount(labels[drawn]) / len(drawn)
    assert share == pytest.approx([1 / 3] * 3, abs=0.02)
    assert sample_weights(sections()[2], labels) is None  # shuffle: a permutation
    _, _, mixed = sections(**{"train.class_weights": "balanced", "train.mixup": 0.2})
    soft, _ = make_loss(mixed, 3, weight[:3])
    hard, _ = make_loss(sections(**{"train.class_weights": "balanced"})[2], 3, weight[:3])
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    assert soft(logits, torch.eye(3)[y]) == pytest.approx(  # no smoothing: the same loss
        torch.nn.functional.cross_entropy(logits, y, weight=weight[:3]).item(), rel=1e-5)
    assert isinstance(hard, torch.nn.CrossEntropyLoss) and hard.weight is not None


@pytest.mark.parametrize("feature_cache", [True, False])  # the head phase on features or images
def test_balanced_weights_and_sampler_train_deterministically(tmp_path, feature_cache):
    cache = imbalanced_cache(tmp_path / "cache")
    settings = {"train.class_weights": "balanced", "train.sampler": "balanced",
                "train.feature_cache": feature_cache,
                "train.phases": [{"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
                                 {"epochs": 1, "unfreeze": 1}]}
    runs = [train_in(tmp_path / name, cache, **settings) for name in ("a", "b")]
    assert runs[0] == runs[1]
    a, b = weights(tmp_path / "a/model.pt"), weights(tmp_path / "b/model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = train_in(tmp_path / "plain", cache, **{**settings, "train.sampler": "shuffle",
                                                   "train.class_weights": "none"})
    c = weights(tmp_path / "plain/model.pt")
    assert plain["epochs"] == 3 and not all(torch.equal(a[k], c[k]) for k in a)


def test_bagging_draws_a_stratified_bootstrap_sample_per_seed(tmp_path):
    labels = np.array([0] * 20 + [1] * 6 + [2] * 3)
    sample = bootstrap_rows(labels, 0)
    assert np.array_equal(sample, bootstrap_rows(labels, 0))  # the seed decides
    assert not np.array_equal(sample, bootstrap_rows(labels, 1))
    assert np.bincount(labels[sample]).tolist() == [20, 6, 3]  # each class keeps its count
    assert len(np.unique(sample)) < len(labels)  # with replacement: some rows repeat
    cache = imbalanced_cache(tmp_path / "cache")
    split = open_split(cache, read_meta(cache), "train")
    rows = bootstrap_rows(split.labels, 3)
    taken = take_rows(split, rows)  # repeated rows read as one split
    assert np.array_equal(taken.images[np.arange(len(rows))],
                          split.images[rows]) and taken.ids == tuple(split.ids[i] for i in rows)
