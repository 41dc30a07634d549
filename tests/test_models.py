import pytest
import torch

from pipeline.contracts.modelfile import load_trained, save_model
from pipeline.core.errors import PipelineError
from pipeline.finetuning.backbones import WeightsError, check_model_config, create_model
from pipeline.finetuning.models import layer_groups, set_trainable, train_mode
from pipeline.params.model import ModelConfig


def _cfg(name="tf_efficientnet_lite0", weights="none", drop_rate=0.0):
    return ModelConfig(name=name, weights=weights, drop_rate=drop_rate)


def test_default_lite0_weights_come_from_the_package():
    model, prep, info = create_model(_cfg(weights="default"), num_classes=4)
    assert info["weights"].startswith("package:") and len(info["sha256"]) == 64
    assert prep.mean == prep.std == (0.5, 0.5, 0.5)
    assert model.get_classifier().out_features == 4
    # pretrained BatchNorm statistics differ from the fresh-model defaults (0 and 1)
    assert not torch.allclose(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))
    random, _, _ = create_model(_cfg(weights="none"), num_classes=4)
    assert not torch.equal(model.conv_stem.weight, random.conv_stem.weight)


def test_local_file_loads_backbone_and_records_sha(tmp_path):
    torch.manual_seed(1)
    source, _, _ = create_model(_cfg(), num_classes=7)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    model, _, info = create_model(_cfg(weights=str(path)), num_classes=3)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.get_classifier().out_features == 3 and len(info["sha256"]) == 64


def test_weights_that_do_not_fit_or_do_not_exist_fail_clearly(tmp_path):
    other, _, _ = create_model(_cfg("resnet18"), num_classes=2)
    path = tmp_path / "resnet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit the architecture"):
        create_model(_cfg(weights=str(path)), num_classes=2)
    with pytest.raises(WeightsError, match="no such file"):
        check_model_config(_cfg(weights=str(tmp_path / "missing.pth")))
    with pytest.raises(WeightsError, match="not a pretrained tag.*in1k"):
        check_model_config(_cfg(weights="imagenet22k"))


def test_hub_weights_without_a_resolvable_hub_look_only_in_the_cache(monkeypatch, tmp_path):
    import socket

    from huggingface_hub import constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # restored after the test
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(WeightsError, match="could not get weights 'default' for resnet18"):
        create_model(_cfg("resnet18", weights="default"), num_classes=2)
    assert constants.HF_HUB_OFFLINE  # no retries against a hub that cannot be reached


def test_unknown_model_name_fails_with_close_names():
    with pytest.raises(PipelineError, match="model.name = 'resnet19'.*Close names: .*resnet18"):
        check_model_config(_cfg("resnet19"))


def test_torchvision_models_get_a_new_head():
    model, prep, info = create_model(_cfg("torchvision:resnet18", drop_rate=0.2),
                                     num_classes=5)
    assert info["library"] == "torchvision"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(WeightsError, match="IMAGENET1K_V1"):
        check_model_config(_cfg("torchvision:resnet18", weights="IMAGENET"))


def test_frozen_bn_keeps_statistics_when_everything_trains():
    model, _, _ = create_model(_cfg(), num_classes=3)
    groups = layer_groups(model)
    set_trainable(model, groups, len(groups))
    train_mode(model, bn="frozen")
    stats = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(stats, model.bn1.running_mean)
    train_mode(model, bn="train")
    model(torch.randn(4, 3, 32, 32))
    assert not torch.equal(stats, model.bn1.running_mean)


def test_trained_checkpoint_round_trips(tmp_path):
    model, _, _ = create_model(_cfg(), num_classes=3)
    meta = {"classes": ["a", "b", "c"], "model": {"name": "tf_efficientnet_lite0",
            "weights": "none", "drop_rate": 0.0},
            "preprocessing": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}}
    save_model(tmp_path / "m.pt", model.state_dict(), meta)
    loaded, prep, got = load_trained(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), model.eval()(x)) and got["classes"] == ["a", "b", "c"]
