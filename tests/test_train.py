"""The train stage's machinery: layer groups, phases, frozen groups, the feature cache,
exact resume after a kill, determinism and DistributedDataParallel on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.contracts.cachefiles import load_split
from pipeline.core.config import parse_sections
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.finetuning.backbones import create_model
from pipeline.finetuning.engine import train_one_epoch
from pipeline.finetuning.finetune import (
    AUTO_PHASES,
    check_phases,
    group_lrs,
    make_optimizer,
    param_groups,
    resolve_auto,
    set_lrs,
)
from pipeline.finetuning.models import layer_groups, set_trainable, train_mode
from pipeline.finetuning.training import LoopState, Monitor, _val_scores
from pipeline.finetuning.trainrun import train_model
from pipeline.modality.image.inputs import to_input
from pipeline.params.model import ModelConfig

from .conftest import REPO, class_image, kill_mid_phase, repo_params

TINY = {"model.name": "timm:test_efficientnet", "model.weights": "none",
        "train.batch_size": 8, "cache.image_size": 32, "train.hflip": False}


def write_cache(cache: Path, *, train_n: int = 48, size: int = 32) -> Path:
    """A cache stage's output with 3 classes of tiny synthetic images."""
    cache.mkdir(parents=True, exist_ok=True)
    meta: dict = {"classes": ["c0", "c1", "c2"], "image_size": size, "fit": "crop",
                  "views": 0, "ids": {}}
    for split, n in (("train", train_n), ("val", 12), ("test", 12)):
        labels = np.arange(n) % 3
        offset = {"train": 0, "val": 500, "test": 900}[split]
        images = np.stack([class_image(int(c), offset + i, size) for i, c in enumerate(labels)])
        np.save(cache / f"{split}_images.npy", images)
        np.save(cache / f"{split}_labels.npy", labels.astype(np.int64))
        meta["ids"][split] = [f"{split}{i:03d}" for i in range(n)]
    (cache / "meta.json").write_text(json.dumps(meta))
    return cache


def sections(**overrides):
    return parse_sections(repo_params(**{**TINY, **overrides}), "base", "model", "train")


def train_in(tmp: Path, cache: Path, **overrides) -> dict:
    base, model_cfg, cfg = sections(**overrides)
    return train_model(base, model_cfg, cfg, cache, tmp / "model.pt", tmp / "train.json",
                       tmp / "curves", tmp / "checkpoints")


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_layer_groups_cover_every_parameter_once_from_stem_to_head():
    for name in ("timm:test_efficientnet", "torchvision:resnet18",
                 "torchvision:mobilenet_v3_small", "torchvision:regnet_y_400mf",
                 "torchvision:alexnet"):
        model, _, _ = create_model(ModelConfig(name, "none", 0.1), 5)
        groups = layer_groups(model)
        names = [n for g in groups for n in g.params]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters()), name
        assert len(set(names)) == len(names)
        assert groups[-1].name == "head" and groups[-1].size == sum(
            p.numel() for p in model.get_submodule(groups[-1].params[0].rsplit(".", 2)[0])
            .parameters())
        assert len(groups) >= 3 and len({g.name for g in groups}) == len(groups)
    resnet, _, _ = create_model(ModelConfig("torchvision:resnet18", "none", 0.0), 5)
    assert [g.name for g in layer_groups(resnet)] == [
        "conv1+bn1", "layer1", "layer2", "layer3", "layer4", "head"]


def test_discriminative_learning_rates_fall_off_with_depth():
    _, _, cfg = sections(**{"train.lr": 0.1, "train.layer_decay": 0.5, "train.phases": [
        {"epochs": 1, "unfreeze": 2, "lr_mult": 2.0}]})
    lrs = group_lrs(cfg, cfg.phases[0], list("abcde"), trainable=(2, 3, 4))
    assert lrs == pytest.approx([0.0, 0.0, 0.05, 0.1, 0.2])
    model, _, _ = create_model(ModelConfig("timm:test_efficientnet", "none", 0.0), 3)
    groups = layer_groups(model)
    optimizer = make_optimizer(cfg, param_groups(model, groups, 0.01))
    names = [g.name for g in groups]
    set_lrs(optimizer, group_lrs(cfg, cfg.phases[0], names, trainable=range(len(groups) - 3,
                                                                           len(groups))))
    by_layer = {g["layer"]: g["lr"] for g in optimizer.param_groups}
    assert by_layer[len(groups) - 1] == pytest.approx(0.2)
    assert by_layer[len(groups) - 3] == pytest.approx(0.05)
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups
               if all(p.ndim == 1 for p in g["params"]))  # no decay on norms and biases


def test_auto_phases_and_hflip_follow_the_data_profile():
    _, _, cfg = sections(**{"train.phases": "auto", "train.hflip": "auto"})
    photo, notes = resolve_auto(cfg, "photo")
    assert photo.hflip is True and photo.phases == AUTO_PHASES["photo"] and len(notes) == 3
    assert photo.sampler == "shuffle"  # every image of a cache has one size
    small, _ = resolve_auto(cfg, "small")
    assert small.hflip is False and small.phases[-1].unfreeze == "all"
    _, _, explicit = sections(**{"train.hflip": True, "train.sampler": "shuffle",
                                 "train.phases": [{"epochs": 1, "unfreeze": "head"}]})
    assert resolve_auto(explicit, "small") == (explicit, [])  # explicit values win
    with pytest.raises(ParamsError, match="choose one of: auto"):
        sections(**{"train.hflip": "sometimes"})


def test_invalid_schedules_fail_before_training_with_a_clear_message():
    with pytest.raises(ParamsError, match=r"phases\[0\]\.epochs = 0 .* at least 1"):
        sections(**{"train.phases": [{"epochs": 0, "unfreeze": "head"}]})
    with pytest.raises(ParamsError, match="schedule = 'linear'.*cosine, step, exponential"):
        sections(**{"train.schedule": "linear"})
    with pytest.raises(ParamsError, match="unfreeze = 'some'"):
        sections(**{"train.phases": [{"epochs": 1, "unfreeze": "some"}]})
    _, _, cfg = sections(**{"train.phases": [{"epochs": 1, "unfreeze": "head"},
                                             {"epochs": 1, "unfreeze": 40}]})
    model, _, _ = create_model(ModelConfig("timm:test_efficientnet", "none", 0.0), 3)
    with pytest.raises(PipelineError, match=r"phases\[1\]\.unfreeze = 40, but the model has "
                                            r"only 6 layer groups below the head"):
        check_phases(cfg, layer_groups(model))


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_frozen_groups_keep_weights_and_batchnorm_statistics_bit_identical(tmp_path, bn):
    cache = write_cache(tmp_path / "cache")
    data = load_split(cache, "train", [f"train{i:03d}" for i in range(48)])
    _, _, cfg = sections(**{"train.weight_decay": 0.1})
    model, prep, _ = create_model(ModelConfig("timm:test_efficientnet", "none", 0.0), 3)
    groups = layer_groups(model)
    optimizer = make_optimizer(cfg, param_groups(model, groups, 0.1))
    set_lrs(optimizer, [0.05] * len(groups))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_trainable(model, groups, 2)  # the head and the group below it
    train_mode(model, bn=bn)
    stream = ((to_input(torch.from_numpy(data.images[np.arange(i, i + 8)]), prep,
                        torch.device("cpu")), torch.from_numpy(data.labels[i:i + 8]))
              for i in range(0, 48, 8))
    train_one_epoch(model, stream, steps=6, optimizer=optimizer, on_step=lambda: None,
                    loss_fn=torch.nn.CrossEntropyLoss(), device=torch.device("cpu"),
                    amp=False, scaler=torch.amp.GradScaler("cpu", enabled=False))
    after = model.state_dict()
    trained = {n for g in groups[-2:] for n in g.params}
    trained_modules = {n.rsplit(".", 1)[0] for n in trained}
    for key, value in before.items():
        if key.rsplit(".", 1)[0] in trained_modules:
            continue
        assert torch.equal(value, after[key]), key  # weights and running statistics
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))
    bn_stats = [k for k in before if k.endswith("running_mean")
                and k.rsplit(".", 1)[0] in trained_modules]
    assert bn_stats  # the group below the head has BatchNorm layers
    changed = [not torch.equal(before[k], after[k]) for k in bn_stats]
    assert any(changed) if bn == "train" else not any(changed)


@pytest.mark.parametrize("hflip", [False, True])  # True: mirrored features are stored too
def test_feature_cache_matches_the_full_forward_pass(tmp_path, hflip):
    cache = write_cache(tmp_path / "cache")
    phases = [{"epochs": 2, "unfreeze": "head", "lr_mult": 5.0}]
    fast = train_in(tmp_path / "fast", cache, **{"train.phases": phases, "train.hflip": hflip,
                                                 "model.drop_rate": 0.2})
    full = train_in(tmp_path / "full", cache, **{"train.phases": phases, "train.hflip": hflip,
                                                 "model.drop_rate": 0.2,
                                                 "train.feature_cache": False})
    a, b = weights(tmp_path / "fast/model.pt"), weights(tmp_path / "full/model.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert fast["best_val_loss"] == pytest.approx(full["best_val_loss"], abs=1e-5)


def test_schedules_warmup_and_options_all_train(tmp_path):
    cache = write_cache(tmp_path / "cache", train_n=24)
    for i, extra in enumerate([
        {"train.schedule": "step", "train.optimizer": "sgd", "train.clip_grad": 1.0,
         "train.accumulate": 2},
        {"train.schedule": "onecycle", "train.mixup": 0.4},
        {"train.schedule": "plateau", "train.cutmix": 1.0, "train.ema_decay": 0.9,
         "train.monitor": "val_loss", "train.patience": 1},
        {"train.schedule": "constant", "train.monitor": "val_macro_f1"},
    ]):
        phases = [{"epochs": 1, "unfreeze": "head"}, {"epochs": 1, "unfreeze": 1},
                  {"epochs": 1, "unfreeze": "all", "schedule": "cosine", "lr_mult": 0.1}]
        metrics = train_in(tmp_path / str(i), cache, **{"train.phases": phases, **extra})
        assert 1 <= metrics["best_epoch"] <= metrics["epochs"] == 3, extra
        lrs = (tmp_path / str(i) / "curves/plots/metrics/lr")
        assert len(list(lrs.iterdir())) == 7  # one curve per layer group
        assert not (tmp_path / str(i) / "checkpoints/last.pt").exists()  # finished


def _project(tmp: Path, cache: Path, **overrides) -> Path:
    (tmp / "data").mkdir(parents=True)
    os.symlink(cache, tmp / "data/cache")
    (tmp / "params.yaml").write_text(yaml.safe_dump(repo_params(**{**TINY, **overrides})))
    return tmp


def _train_process(project: Path, *launcher: str) -> subprocess.Popen:
    """``python -m pipeline.stages.train`` in ``project``, or under a launcher (torchrun)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*(launcher or [sys.executable]), "-m", "pipeline.stages.train"],
                            cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def single_and_ddp_losses(tmp: Path, cache: Path, port: int, **settings) -> dict:
    """Per-epoch train losses of one process ("single") and of 2 gloo processes under
    torchrun ("ddp") training on ``cache`` on the CPU with ``settings``."""
    losses = {}
    for name, prefix in (("single", ()), ("ddp", (sys.executable, "-m", "torch.distributed.run",
                                                  "--nproc_per_node", "2", "--master_port",
                                                  str(port)))):
        project = _project(tmp / name, cache, **{"base.device": "cpu", **settings})
        proc = _train_process(project, *prefix)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        rows = (project / "metrics/curves/plots/metrics/train_loss.tsv").read_text()
        losses[name] = [float(r.split("\t")[-1]) for r in rows.splitlines()[1:]]
    return losses


PHASES = [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
          {"epochs": 3, "unfreeze": 2, "lr_mult": 1.0},
          {"epochs": 1, "unfreeze": "all", "lr_mult": 0.5}]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["shuffle", "balanced"])
def test_killed_run_resumes_bit_identical_and_reruns_are_deterministic(tmp_path, sampler):
    cache = write_cache(tmp_path / "cache", train_n=192)
    settings = {"train.phases": PHASES, "model.drop_rate": 0.2, "train.mixup": 0.2,
                "train.sampler": sampler}
    runs = {}
    for name in ("a", "b"):
        project = _project(tmp_path / name, cache, **settings)
        done = _train_process(project)
        out, _ = done.communicate(timeout=300)
        assert done.returncode == 0, out
        runs[name] = weights(project / "models/model.pt")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])  # same seed

    project = _project(tmp_path / "killed", cache, **settings)
    checkpoint = project / "checkpoints/train/last.pt"
    kill_mid_phase(_train_process(project), checkpoint)
    assert not (project / "models/model.pt").exists()
    resumed = _train_process(project)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resuming" in out, out
    final = weights(project / "models/model.pt")
    assert all(torch.equal(runs["a"][k], final[k]) for k in final)
    curves = (project / "metrics/curves/plots/metrics/train_loss.tsv").read_text()
    assert len(curves.splitlines()) == 1 + sum(p["epochs"] for p in PHASES)


@pytest.mark.slow
def test_two_gloo_processes_match_a_single_process(tmp_path):
    cache = write_cache(tmp_path / "cache", train_n=96)
    phases = [{"epochs": 1, "unfreeze": "head", "lr_mult": 5.0},
              {"epochs": 2, "unfreeze": "all", "lr_mult": 0.5}]
    losses = single_and_ddp_losses(tmp_path, cache, 29533, **{  # no dropout: same draws
        "train.phases": phases, "model.drop_rate": 0.0})
    assert len(losses["ddp"]) == 3
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-4)


def test_every_rank_gets_rows_from_every_batch():
    from pipeline.finetuning.engine import batch_count, batch_indices

    for n, world in ((17, 2), (16, 2), (9, 3), (10, 1)):
        shares = [list(batch_indices(n, 8, generator=torch.Generator().manual_seed(0),
                                     rank=r, world=world)) for r in range(world)]
        assert all(len(s) == batch_count(n, 8, world) for s in shares)
        assert all(len(batch) > 0 for s in shares for batch in s)
        rows = np.concatenate([b for s in shares for b in s])
        assert len(set(rows)) == len(rows)  # no row twice
        assert len(rows) == (n if n % 8 >= world or n % 8 == 0 else n - n % 8)


def keep_sequence(accuracies: list[float], phases: list[int], select: str, n: int = 115
                  ) -> LoopState:
    """Feed epochs' val scores (val loss falling by epoch) through the kept-epoch rule."""
    from pipeline.finetuning.training import Checkpointer

    loop, monitor = LoopState(), Monitor("val_accuracy")
    keeper = Checkpointer(Path("unused"), [])
    for epoch, (acc, phase) in enumerate(zip(accuracies, phases), start=1):
        loop.epoch = epoch
        val = {"val_accuracy": acc, "val_macro_f1": acc, "val_loss": 1.0 - epoch / 100,
               "val_n": float(n), "val_loss_se": 0.01}
        keeper.keep_best(loop, val, torch.nn.Linear(1, 1), monitor, phase, select)
    return loop


def test_a_one_image_blip_on_a_head_epoch_does_not_beat_a_fine_tuned_epoch():
    # the run: head epoch 5 reaches 114 of 115, the fine-tuned epochs 113 of 115
    head = [0.9652, 0.9739, 0.9826, 0.9826, 0.9913, 0.9826, 0.9826, 0.9826, 0.9826, 0.9826]
    accuracies, phases = head + [0.9826, 0.9826], [0] * 10 + [1, 1]
    loop = keep_sequence(accuracies, phases, "latest_within_se")
    assert loop.best is not None and loop.peak is not None
    assert (loop.best["epoch"], loop.best["phase"]) == (12, 1)
    assert loop.peak["epoch"] == 5 and "within one standard error" in loop.best["why"]
    assert keep_sequence(accuracies, phases, "best").best["epoch"] == 5  # the old rule
    # three images worse is no blip: the head epoch stays
    worse = keep_sequence(head + [0.9652, 0.9652], phases, "latest_within_se").best
    assert worse["epoch"] == 10 and "epoch 5" in worse["why"]  # the last within noise


def test_val_scores_carry_the_size_and_the_loss_error_out_of_the_curves():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    scores = _val_scores(labels, probs)
    losses = -np.log([0.9, 0.8, 0.4, 0.5])
    assert scores["val_n"] == 4 and scores["val_accuracy"] == 0.75
    assert scores["val_loss_se"] == pytest.approx(losses.std() / 2)
    # one image of four is more than the accuracy's standard error floor
    assert Monitor("val_accuracy").noise(scores) == pytest.approx(
        max(np.sqrt((0.1875 + 1 / 16) / 4), 0.25))


@pytest.mark.parametrize("hflip", [False, True])  # True: mirrored outputs are stored too
def test_stored_frozen_layers_train_the_same_weights_as_recomputing_them(tmp_path, hflip,
                                                                          capsys):
    cache = write_cache(tmp_path / "cache")
    settings = {"train.phases": [{"epochs": 2, "unfreeze": 2, "lr_mult": 1.0}],
                "train.hflip": hflip, "model.drop_rate": 0.2}
    fast = train_in(tmp_path / "fast", cache, **settings)
    log = capsys.readouterr().out
    full = train_in(tmp_path / "full", cache, **settings, **{"train.feature_cache": False})
    assert "on stored outputs of blocks." in log and "stored outputs of" not in \
        capsys.readouterr().out
    a, b = weights(tmp_path / "fast/model.pt"), weights(tmp_path / "full/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert fast == full


def test_a_head_phase_stores_the_frozen_outputs_the_partial_phase_after_it_trains_from(
        tmp_path, capsys):
    cache = write_cache(tmp_path / "cache")
    settings = {"train.phases": [{"epochs": 2, "unfreeze": "head", "lr_mult": 5.0},
                                 {"epochs": 2, "unfreeze": 2, "lr_mult": 1.0}],
                "train.hflip": True}
    fast = train_in(tmp_path / "fast", cache, **settings)
    log = capsys.readouterr().out
    full = train_in(tmp_path / "full", cache, **settings, **{"train.feature_cache": False})
    assert log.index("phase 1 trains on stored outputs of blocks.") < log.index("epoch 1 (")
    assert "stored outputs of blocks." not in log[log.index("phase 1: "):]  # not again
    a, b = weights(tmp_path / "fast/model.pt"), weights(tmp_path / "full/model.pt")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    assert fast["best_val_loss"] == pytest.approx(full["best_val_loss"], abs=1e-5)
