"""Every recipe of docs/recipes.md, read from the page, applied to tiny synthetic images on
lite0 (the backbone the page names groups of, random weights) and checked for what it
should do: the logged per-group learning rates, trainable-parameter counts, the saved
model's head, the optimizer and the loss weights."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pipeline.contracts.cachefiles import bootstrap_rows, open_split, read_meta
from pipeline.contracts.modelfile import load_trained
from pipeline.core.config import check_params, parse_sections
from pipeline.finetuning.engine import predict
from pipeline.finetuning.finetune import resolve_auto
from pipeline.finetuning.models import layer_groups
from pipeline.finetuning.training import Setup, build_setup, sample_weights
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.models import model_input
from pipeline.serving.predict import Predictor
from pipeline.stages.member import member_settings

from .conftest import REPO, repo_params
from .test_recipes import imbalanced_cache
from .test_train import TINY

DOC = REPO / "docs" / "recipes.md"
RECIPE = re.compile(r"<!-- recipe: (\S+) -->\n```yaml\n(.*?)```", re.S)
# the params a snippet goes into: the repo's, on lite0 with random weights, and two short
# phases for the snippets that keep train.phases (auto would train lite0 for 8 epochs)
BASE = {**TINY, "model.name": "tf_efficientnet_lite0", "model.weights": "none",
        "train.phases": [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
                         {"epochs": 1, "unfreeze": 1}]}
COUNTS = np.array([24, 6, 3])  # train images of c0, c1, c2 (imbalanced_cache)
GROUPS = ["conv_stem+bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4",
          "blocks.5", "blocks.6+conv_head+bn2", "head"]
TOP = "blocks.6+conv_head+bn2"


def recipes() -> dict[str, dict[str, Any]]:
    """The page's snippets by recipe name, as params mappings."""
    found = RECIPE.findall(DOC.read_text())
    assert len({name for name, _ in found}) == len(found), "recipe names must differ"
    return {name: yaml.safe_load(body) for name, body in found}


def merged(base: dict[str, Any], snippet: dict[str, Any]) -> dict[str, Any]:
    """params with a snippet's keys put in (mappings merged key by key, lists replaced)."""
    out = copy.deepcopy(base)
    for key, value in snippet.items():
        out[key] = (merged(out[key], value) if isinstance(value, dict)
                    and isinstance(out.get(key), dict) else value)
    return out


@dataclass
class Applied:
    """One recipe trained on the tiny cache, and the set-up its params build."""

    params: dict[str, Any]
    sections: dict[str, Any]
    metrics: dict[str, Any]
    setup: Setup
    out: Path
    cache: Path

    def curve(self, name: str) -> list[float]:
        rows = (self.out / "curves/plots/metrics" / f"{name}.tsv").read_text().splitlines()
        return [float(r.split("\t")[-1]) for r in rows[1:]]

    def lr(self, group: str) -> list[float]:
        return self.curve(f"lr/{GROUPS.index(group):02d}_{group}")

    def size(self, *groups: str) -> int:
        return sum(g.size for g in self.setup.groups if g.name in groups)


def check_explicit_lrs(r: Applied) -> None:
    assert r.lr("head") == pytest.approx([1e-3] * 4 + [1e-5])  # default: every group
    assert r.lr(TOP) == pytest.approx([0, 0, 1e-4, 1e-4, 1e-5])
    assert r.lr("conv_stem+bn1") == pytest.approx([0, 0, 0, 0, 1e-5])
    assert r.curve("trainable_params") == [r.size("head")] * 2 + [r.size("head", TOP)] * 2 \
        + [r.size(*GROUPS)]


def check_gradual(r: Applied) -> None:
    head, top, b5, b4 = r.size("head"), r.size(TOP), r.size("blocks.5"), r.size("blocks.4")
    assert r.curve("trainable_params") == [head, head + top, head + top + b5,
                                           head + top + b5 + b4, head + top + b5 + b4]
    assert r.lr("blocks.5")[:2] == [0, 0] and r.lr("blocks.3") == [0] * 5  # still frozen
    assert r.curve("phase") == [0, 1, 2, 3, 3]
    meta = torch.load(r.out / "model.pt", weights_only=True)["meta"]
    assert [(p["epochs"], p["unfreeze"]) for p in meta["params"]["train"]["phases"]] == [
        (1, "head"), (1, 1), (1, 2), (2, 3)]


def check_custom_head(r: Applied) -> None:
    model, _, _ = load_trained(r.out / "model.pt")
    head = model.get_classifier()
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear, nn.LayerNorm, nn.GELU,
                                       nn.Dropout, nn.Linear, nn.LayerNorm, nn.GELU,
                                       nn.Dropout, nn.Linear]
    assert [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)] == [
        (1280, 64), (64, 32), (32, 3)]
    assert r.size("head") == sum(p.numel() for p in head.parameters())
    assert r.curve("trainable_params") == [r.size("head")] * 2 + [
        r.size("head", TOP, "blocks.5")]


def check_run_patience(r: Applied) -> None:
    losses, best, since, expected = r.curve("val_loss"), np.inf, 0, None
    for epoch, loss in enumerate(losses):  # the rule: stop after 1 epoch without a new best
        best, since = (loss, 0) if loss < best else (best, since + 1)
        if since >= 1:
            expected = epoch + 1
            break
    assert r.metrics["epochs"] == (expected or 6) == len(losses)
    assert r.metrics["best_val_loss"] == pytest.approx(min(losses), abs=1e-6)
    if expected is not None and expected <= 4:  # the run ended in phase 0: phase 1 never ran
        assert set(r.curve("phase")) == {0}


def check_adam(r: Applied) -> None:
    optimizer = r.setup.optimizer
    assert type(optimizer) is torch.optim.Adam
    assert not optimizer.defaults.get("decoupled_weight_decay", False)  # L2 in the gradient
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 1e-4}


def check_sgd(r: Applied) -> None:
    optimizer = r.setup.optimizer
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["nesterov"] is False and optimizer.defaults["momentum"] == 0.9
    assert r.lr("head")[0] < 0.01 * 5  # train.lr x lr_mult, past the peak (cosine)
    assert r.curve("trainable_params") == [r.size("head"), r.size("head", TOP)]


def check_rmsprop(r: Applied) -> None:
    optimizer = r.setup.optimizer
    assert type(optimizer) is torch.optim.RMSprop
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["alpha"] == 0.9
    assert np.isfinite(r.curve("train_loss")).all()


def check_exponential(r: Applied) -> None:
    lr = r.sections["train"].lr
    assert r.lr("head") == pytest.approx([lr * 0.7 ** k for k in (1, 2, 3)])
    assert r.lr(TOP) == pytest.approx([lr * 0.8 * 0.7 ** k for k in (1, 2, 3)])  # layer_decay
    assert r.lr("blocks.5") == [0] * 3


def check_cosine_floor(r: Applied) -> None:
    # 2 cosine epochs: halfway after the first, at the floor after the second, then flat
    assert r.lr("head") == pytest.approx([1e-4 + (1e-2 - 1e-4) * 0.5, 1e-4, 1e-4])
    assert r.lr(TOP) == pytest.approx([5e-5] * 3)  # its peak is below the floor
    assert r.lr("blocks.5") == [0] * 3


def check_mixup(r: Applied) -> None:
    mix = r.setup.mix
    assert mix is not None
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0])
    mixed = cutmix = 0
    for _ in range(400):
        out, _ = mix(x.clone(), y)
        if not torch.equal(out, x):
            mixed += 1  # cutmix pastes pixels of the reversed batch; mixup blends all
            cutmix += bool(((out == x) | (out == x.flip(0))).all())
    assert mixed / 400 == pytest.approx(0.5, abs=0.1)
    assert cutmix / mixed == pytest.approx(0.33, abs=0.12)


def check_balanced(r: Applied) -> None:
    weight = COUNTS.sum() / (3 * COUNTS)
    assert r.setup.loss_fn.weight.tolist() == pytest.approx(weight.tolist())
    labels = np.repeat([0, 1, 2], COUNTS)
    draw = sample_weights(r.sections["train"], labels)
    assert np.bincount(labels, weights=draw) == pytest.approx([1, 1, 1])  # classes equal


def check_class_weights(r: Applied) -> None:
    assert r.setup.loss_fn.weight.tolist() == [1.0, 2.0, 5.0]  # c0 left out: 1


def check_tta(r: Applied) -> None:
    tta = r.sections["evaluate"].tta
    predictor = Predictor.load(r.out / "model.pt", device="cpu")
    test = open_split(r.cache, read_meta(r.cache), "test")
    images = np.asarray(test.images[np.arange(len(test.labels))])
    inputs = model_input(predictor.model, predictor.prep, predictor.modality)
    evaluated = predict(predictor.model, test, inputs=inputs,
                        device=torch.device("cpu"), batch_size=8, tta=tta)
    assert predictor.probabilities(images, tta=tta) == pytest.approx(evaluated)
    plain = predictor.probabilities(images)
    mirrored = predictor.probabilities(np.ascontiguousarray(images[:, :, ::-1]))
    assert evaluated == pytest.approx((plain + mirrored) / 2)


def check_bagging(r: Applied) -> None:
    labels = open_split(r.cache, read_meta(r.cache), "train").labels
    sample = bootstrap_rows(labels, r.sections["train"].seed)
    meta = torch.load(r.out / "model.pt", weights_only=True)["meta"]
    assert meta["bagging"] == {"rows": len(labels), "distinct": len(np.unique(sample))}
    assert np.bincount(labels[sample]).tolist() == COUNTS.tolist()  # per class, as many
    assert len(np.unique(sample)) < len(labels)  # drawn with replacement


def check_hyper_ensemble(r: Applied) -> None:
    sections = check_params(r.params)  # the members' keys checked against train and model
    own = {seed: member_settings(sections["model"], sections["train"], sections["members"],
                                 seed) for seed in sections["ensemble"].seeds}
    assert own[0] == (sections["model"], dataclasses.replace(sections["train"], seed=0))
    assert own[1][1] == dataclasses.replace(sections["train"], seed=1, label_smoothing=0.0)
    assert sections["train"].label_smoothing > 0
    assert [(p.epochs, p.unfreeze) for p in own[2][1].phase_list] == [(6, "head"), (6, "all")]
    # member 1 trains with its own settings, and its model records them
    model_cfg, train_cfg = own[1]
    train_model(sections["base"], model_cfg, train_cfg, r.cache, r.out / "member1.pt",
                r.out / "member1.json", r.out / "member1_curves", r.out / "member1_checkpoints")
    meta = torch.load(r.out / "member1.pt", weights_only=True)["meta"]["params"]["train"]
    assert (meta["seed"], meta["label_smoothing"]) == (1, 0.0)


CHECKS: dict[str, Callable[[Applied], None]] = {
    "explicit-lrs": check_explicit_lrs, "gradual": check_gradual,
    "custom-head": check_custom_head, "run-patience": check_run_patience,
    "adam": check_adam, "sgd": check_sgd, "rmsprop": check_rmsprop,
    "exponential": check_exponential, "cosine-floor": check_cosine_floor,
    "mixup": check_mixup, "balanced": check_balanced, "class-weights": check_class_weights,
    "tta": check_tta, "bagging": check_bagging, "hyper-ensemble": check_hyper_ensemble}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imbalanced_cache(tmp_path_factory.mktemp("recipes") / "cache")


@pytest.mark.slow  # lite0 trains 2 to 6 epochs on tiny images per recipe
@pytest.mark.parametrize("name", list(recipes()))
def test_recipe_from_the_docs_does_what_it_says(name: str, cache: Path, tmp_path: Path
                                                ) -> None:
    assert set(recipes()) == set(CHECKS)  # every recipe on the page is checked, and only those
    params = merged(repo_params(**BASE), recipes()[name])
    sections = dict(zip(["base", "model", "train", "evaluate"], parse_sections(
        params, "base", "model", "train", "evaluate")))
    metrics = train_model(sections["base"], sections["model"], sections["train"], cache,
                          tmp_path / "model.pt", tmp_path / "train.json", tmp_path / "curves",
                          tmp_path / "checkpoints")
    meta = read_meta(cache)
    cfg, _ = resolve_auto(sections["train"], meta.profile)
    torch.manual_seed(0)
    setup = build_setup(sections["model"], cfg, 3, torch.device("cpu"), verbose=False,
                        train_labels=np.repeat([0, 1, 2], COUNTS), classes=meta.classes)
    assert [g.name for g in layer_groups(setup.model)] == GROUPS
    CHECKS[name](Applied(params, sections, metrics, setup, tmp_path, cache))
