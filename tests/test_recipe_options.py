"""Fine-tuning recipes as params, part 2 (issue 15): a custom head (model.head), the
optimizers and schedules, explicit per-class loss weights, and test-time augmentation in
predict and serve. On the tiny test model (timm's test_efficientnet, 256 features)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.backbones import Head, create_model, load_trained
from pipeline.errors import ParamsError, PipelineError
from pipeline.models import layer_groups, set_trainable, train_mode
from pipeline.training import check_head_batches

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
