"""Fine-tuning recipes as params, part 2 (issue 15): a custom head (model.head), the
optimizers and schedules, explicit per-class loss weights, and test-time augmentation in
predict and serve. On the tiny test model (timm's test_efficientnet, 256 features)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipeline import __main__ as cli
from pipeline.contracts.cachefiles import ArraySplit
from pipeline.contracts.modelfile import load_trained, save_model
from pipeline.core.config import as_dict
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.finetuning.backbones import Head, create_model
from pipeline.finetuning.engine import predict
from pipeline.finetuning.finetune import make_optimizer, make_schedule, param_groups, set_lrs
from pipeline.finetuning.models import layer_groups, set_trainable, train_mode
from pipeline.finetuning.training import check_head_batches, class_weights, make_loss
from pipeline.modality.models import model_input
from pipeline.serving.predict import Predictor

from .conftest import class_image
from .test_recipes import curve
from .test_train import sections, train_in, weights, write_cache


def tiny_model(**overrides):
    _, model_cfg, _ = sections(**overrides)
    return create_model(model_cfg, 3)[0]


def test_default_head_is_the_single_linear_layer_as_before():
    torch.manual_seed(0)
    model = tiny_model()  # model.drop_rate 0.1, model.head defaults
    head = model.get_classifier()
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert [k for k in model.state_dict() if k.startswith("classifier")] == [
        "classifier.1.weight", "classifier.1.bias"]
    torch.manual_seed(0)  # the same draws as the Linear this head replaced
    backbone = create_model(sections(**{"model.drop_rate": 0.0})[1], 3)[0]
    assert type(backbone.get_classifier()) is nn.Linear  # no dropout: a bare Linear
    assert torch.equal(backbone.get_classifier().weight, head[1].weight)


def test_custom_head_layers_group_freezing_and_reload(tmp_path):
    spec = {"hidden": [32, 16], "activation": "gelu", "dropout": 0.2, "norm": "batchnorm"}
    model = tiny_model(**{"model.head": spec})
    head = model.get_classifier()
    assert isinstance(head, Head)
    assert [type(m).__name__ for m in head] == [
        "Dropout", "Linear", "BatchNorm1d", "GELU", "Dropout",
        "Linear", "BatchNorm1d", "GELU", "Dropout", "Linear"]
    assert [m.out_features for m in head if isinstance(m, nn.Linear)] == [32, 16, 3]
    groups = layer_groups(model)
    head_size = sum(p.numel() for p in head.parameters())
    assert groups[-1].name == "head" and groups[-1].size == head_size
    assert set_trainable(model, groups, 1) == head_size  # every hidden layer trains
    train_mode(model, bn="frozen")  # pretrained BatchNorm frozen, the head's trains
    assert all(m.training for m in head)
    assert not model.bn1.training
    for name, bad, message in (("hidden", [0], r"model\.head\.hidden = \[0\]"),
                               ("activation", "tanh", "relu, gelu, silu"),
                               ("norm", "group", "none, batchnorm, layernorm"),
                               ("dropout", 1.0, "less than 1")):
        with pytest.raises(ParamsError, match=message):
            sections(**{"model.head": {**spec, name: bad}})
    with pytest.raises(ParamsError, match=r"unknown key 'model\.head\.width'"):
        sections(**{"model.head": {"width": 3}})
    # a trained model with this head reloads with it, from its meta alone
    cache = write_cache(tmp_path / "cache", train_n=24)
    train_in(tmp_path, cache, **{"model.head": spec, "train.phases": [
        {"epochs": 1, "unfreeze": "head"}, {"epochs": 1, "unfreeze": 1}]})
    saved = weights(tmp_path / "model.pt")
    loaded, _, meta = load_trained(tmp_path / "model.pt")
    assert meta["model"]["head"]["hidden"] == (32, 16)
    assert isinstance(loaded.get_classifier(), Head)
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())
    assert saved["classifier.2.running_mean"].abs().sum() > 0  # its statistics trained
    assert curve(tmp_path, "trainable_params")[0] == head_size


def test_torchvision_head_is_the_whole_new_head():
    _, model_cfg, _ = sections(**{"model.name": "torchvision:resnet18",
                                  "model.head": {"hidden": [8]}})
    model = create_model(model_cfg, 3)[0]
    groups = layer_groups(model)
    assert groups[-1].params == ("fc.1.weight", "fc.1.bias", "fc.3.weight", "fc.3.bias")


def test_batchnorm_head_refuses_a_batch_of_one():
    _, model_cfg, _ = sections(**{"model.head": {"hidden": [8], "norm": "batchnorm"}})
    check_head_batches(model_cfg, 18, 8)  # last batch of 2
    with pytest.raises(PipelineError, match="batchnorm needs at least 2 images"):
        check_head_batches(model_cfg, 17, 8)
    with pytest.raises(PipelineError, match="over 4 process"):
        check_head_batches(model_cfg, 32, 4, world=4)
    check_head_batches(sections()[1], 17, 8)  # no norm in the head: any batch


@pytest.mark.parametrize("name, nesterov, kind", [
    ("adamw", True, torch.optim.AdamW), ("adam", True, torch.optim.Adam),
    ("sgd", True, torch.optim.SGD), ("sgd", False, torch.optim.SGD),
    ("rmsprop", True, torch.optim.RMSprop)])
def test_optimizers_keep_the_param_groups_and_their_decay(name, nesterov, kind):
    _, _, cfg = sections(**{"train.optimizer": name, "train.nesterov": nesterov,
                            "train.momentum": 0.8, "train.weight_decay": 0.05})
    model = tiny_model()
    groups = layer_groups(model)
    optimizer = make_optimizer(cfg, param_groups(model, groups, cfg.weight_decay))
    assert type(optimizer) is kind
    assert {(g["name"], g["weight_decay"] > 0) for g in optimizer.param_groups} == {
        (g.name, decay) for g in groups for decay in (True, False)}
    assert all(g["weight_decay"] in (0.0, 0.05) for g in optimizer.param_groups)
    if kind is torch.optim.SGD:
        assert optimizer.defaults["nesterov"] is nesterov
    if kind in (torch.optim.SGD, torch.optim.RMSprop):
        assert optimizer.defaults["momentum"] == 0.8
    with pytest.raises(ParamsError, match="adamw, adam, sgd, rmsprop"):
        sections(**{"train.optimizer": "lamb"})


def test_adam_adds_weight_decay_to_the_gradient_adamw_decouples_it():
    """One step with a zero gradient: AdamW shrinks the weight by lr x wd; Adam's L2 term
    is its whole (normalised) gradient, so it moves by about lr."""
    moved = {}
    for name in ("adam", "adamw"):
        _, _, cfg = sections(**{"train.optimizer": name, "train.lr": 0.1})
        weight = nn.Parameter(torch.ones(2, 2))
        optimizer = make_optimizer(cfg, [{"params": [weight], "weight_decay": 0.01,
                                          "layer": 0, "name": "w"}])
        weight.grad = torch.zeros(2, 2)
        optimizer.step()
        moved[name] = 1 - weight.detach()
    assert moved["adamw"] == pytest.approx(torch.full((2, 2), 0.1 * 0.01), rel=1e-4)
    assert moved["adam"] == pytest.approx(torch.full((2, 2), 0.1), rel=1e-4)


def test_exponential_and_floored_cosine_schedules_in_the_logged_group_lrs(tmp_path):
    cache = write_cache(tmp_path / "cache", train_n=24)  # 3 steps per epoch
    lrs = {"head": 1e-2, "blocks.4+conv_head+bn2": 1e-4}
    phase = {"epochs": 3, "unfreeze": 1, "lrs": lrs}
    train_in(tmp_path / "exp", cache, **{
        "train.schedule": "exponential", "train.decay_gamma": 0.5,
        "train.warmup_epochs": 0, "train.phases": [phase]})
    assert curve(tmp_path / "exp", "lr/06_head") == pytest.approx([5e-3, 2.5e-3, 1.25e-3])
    train_in(tmp_path / "cos", cache, **{
        "train.schedule": "cosine", "train.min_lr": 1e-3, "train.cosine_epochs": 1,
        "train.warmup_epochs": 0, "train.phases": [phase]})
    # the head reaches the floor after 1 epoch and stays; a group whose peak is below the
    # floor keeps its peak; frozen groups stay at 0
    assert curve(tmp_path / "cos", "lr/06_head") == pytest.approx([1e-3] * 3)
    assert curve(tmp_path / "cos", "lr/05_blocks.4+conv_head+bn2") == pytest.approx([1e-4] * 3)
    assert curve(tmp_path / "cos", "lr/04_blocks.3") == [0, 0, 0]
    _, _, cfg = sections(**{"train.warmup_epochs": 0, "train.phases": [
        {"epochs": 4, "unfreeze": "head", "schedule": "cosine"}]})
    model = tiny_model()
    optimizer = make_optimizer(cfg, param_groups(model, layer_groups(model), 0.0))
    set_lrs(optimizer, [0.0] * 6 + [1.0])
    schedule = make_schedule(optimizer, cfg, cfg.phases[0], steps_per_epoch=1, mode="max")
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[-1]["lr"])
        optimizer.step()
        schedule.batch.step()
    assert seen == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                  0.5 * (1 + math.cos(3 * math.pi / 4))])  # no floor: as before
    with pytest.raises(ParamsError, match="schedule = 'poly'.*exponential"):
        sections(**{"train.schedule": "poly"})
    with pytest.raises(ParamsError, match="min_lr = -1"):
        sections(**{"train.min_lr": -1})
    with pytest.raises(ParamsError, match="cosine schedule, which no phase uses"):
        sections(**{"train.min_lr": 1e-5, "train.schedule": "step"})
    sections(**{"train.min_lr": 1e-5, "train.schedule": "step", "train.phases": [
        {"epochs": 1, "unfreeze": "head", "schedule": "cosine"}]})  # a phase's own cosine


def test_mixup_probabilities_reach_timm_mixup():
    _, _, cfg = sections(**{"train.mixup": 0.4, "train.cutmix": 1.0, "train.mixup_prob": 0.0,
                            "train.mixup_switch_prob": 0.3})
    _, mix = make_loss(cfg, 3)
    assert mix is not None
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    mixed, target = mix(x.clone(), y)
    assert torch.equal(mixed, x)  # prob 0: no batch mixed
    assert target.argmax(1).tolist() == y.tolist()
    with pytest.raises(ParamsError, match="mixup_switch_prob = 2"):
        sections(**{"train.mixup_switch_prob": 2})


def test_explicit_class_weights_by_name(tmp_path):
    _, _, cfg = sections(**{"train.class_weights": {"c2": 4.0, "c0": 0.5}})
    labels = np.array([0, 1, 2, 2])
    weight = class_weights(cfg, labels, 3, classes=["c0", "c1", "c2"])
    assert weight.tolist() == [0.5, 1.0, 4.0]  # c1, not named, weighs 1
    loss, _ = make_loss(cfg, 3, weight)
    assert loss.weight.tolist() == [0.5, 1.0, 4.0]
    for bad, message in (({"c0": 0}, "weights greater than 0"), ({}, "weights greater"),
                         ({"c0": "heavy"}, r"class_weights\.c0 = 'heavy': expected a number"),
                         ("balancd", "none, balanced")):
        with pytest.raises(ParamsError, match=message):
            sections(**{"train.class_weights": bad})
    cache = write_cache(tmp_path / "cache", train_n=24)
    with pytest.raises(PipelineError, match=r"names 'cat', which is no class of the data; "
                                            r"valid names: c0, c1, c2"):
        train_in(tmp_path, cache, **{"train.class_weights": {"cat": 2.0}})
    assert not (tmp_path / "curves").exists()  # failed before any epoch
    train_in(tmp_path / "ok", cache, **{"train.class_weights": {"c2": 4.0}, "train.phases": [
        {"epochs": 1, "unfreeze": "head"}]})
    meta = torch.load(tmp_path / "ok/model.pt", weights_only=True)["meta"]
    assert meta["params"]["train"]["class_weights"] == {"c2": 4.0}


@pytest.fixture
def saved_model(tmp_path):
    """A tiny untrained model saved as the train stage saves one, and 3 PNG files."""
    torch.manual_seed(0)
    _, model_cfg, _ = sections(**{"model.head": {"hidden": [16]}})
    model, prep, info = create_model(model_cfg, 3)
    meta = {"classes": ["a", "b", "c"], "arch": info["arch"], "model": as_dict(model_cfg),
            "preprocessing": {"image_size": 32, "fit": "crop", "mean": list(prep.mean),
                              "std": list(prep.std)}}
    save_model(tmp_path / "model.pt", model.state_dict(), meta)
    files = []
    for i in range(3):
        pixels = class_image(i, i, 40)
        pixels[:, :12] = 255  # left and right differ: a mirror gives other probabilities
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(pixels).save(files[-1])
    return tmp_path / "model.pt", files


def test_predict_tta_matches_evaluate(saved_model, tmp_path):
    path, files = saved_model
    predictor = Predictor.load(path, device="cpu")
    prepared = np.stack([predictor.prepare(np.array(Image.open(f).convert("RGB")))
                         for f in files])
    split = ArraySplit(prepared, np.zeros(3, dtype=np.int64), ("0", "1", "2"))
    plain = predictor.probabilities(prepared)
    mirrored = predictor.probabilities(prepared[:, :, ::-1])
    flip = predictor.probabilities(prepared, tta="flip")
    assert flip == pytest.approx((plain + mirrored) / 2)
    assert not np.allclose(flip, plain)
    for tta in ("none", "flip", "crops"):  # what the evaluate stage computes
        evaluated = predict(predictor.model, split,
                            inputs=model_input(predictor.model, predictor.prep,
                                               predictor.modality),
                            device=torch.device("cpu"), batch_size=2, tta=tta)
        assert predictor.probabilities(prepared, tta=tta) == pytest.approx(evaluated)
    with pytest.raises(PipelineError, match="none, flip, crops"):
        predictor.probabilities(prepared, tta="rotate")
    out = tmp_path / "pred.csv"
    cli.main(["predict", *map(str, files), "--model", str(path), "--out", str(out),
              "--tta", "crops", "--device", "cpu", "--top-k", "3"])
    rows = list(csv.DictReader(out.open()))
    crops = predictor.probabilities(prepared, tta="crops")
    for row, probs in zip(rows, crops):
        by_label = {row[f"top{i}_label"]: float(row[f"top{i}_prob"]) for i in (1, 2, 3)}
        assert [by_label[c] for c in "abc"] == pytest.approx(probs.tolist(), abs=1e-6)
    with pytest.raises(SystemExit):
        cli.main(["predict", str(files[0]), "--model", str(path), "--tta", "rotate"])


def test_serve_tta_default_and_per_request(saved_model):
    from fastapi.testclient import TestClient

    from pipeline.serving.serve import create_app

    path, files = saved_model
    predictor = Predictor.load(path, device="cpu")
    prepared = predictor.prepare(np.array(Image.open(files[0]).convert("RGB")))[None]
    client = TestClient(create_app(path, device="cpu", tta="flip", k_default=3))
    assert client.get("/health").json()["tta"] == "flip"

    def answer(**params):
        reply = client.post("/predict", params=params,
                            files={"file": ("x.png", files[0].read_bytes())})
        assert reply.status_code == 200, reply.text
        return [{t["label"]: t["probability"] for t in reply.json()["top_k"]}[c] for c in "abc"]

    assert answer() == pytest.approx(predictor.probabilities(prepared, tta="flip")[0].tolist())
    assert answer(tta="crops") == pytest.approx(
        predictor.probabilities(prepared, tta="crops")[0].tolist())
    assert answer(tta="none") != pytest.approx(answer())
    bad = client.post("/predict", params={"tta": "rotate"},
                      files={"file": ("x.png", files[0].read_bytes())})
    assert bad.status_code == 422 and "none, flip, crops" in bad.text
    with pytest.raises(PipelineError, match="tta = 'rotate'"):
        create_app(path, device="cpu", tta="rotate")
