"""Transfer-learning helpers: layer groups, how many a phase trains, freezing (BatchNorm
statistics included) and the training mode that respects it.

Only the train stage (and what trains) needs these; building a backbone and its weights
is :mod:`pipeline.finetuning.backbones`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.finetuning.backbones import classifier, head_module


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

    head_names = {f"{classifier(model)[0]}.{n}" for n, _ in head_module(model).named_parameters()}
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


def trainable_indices(unfreeze: str | int | tuple[str, ...], groups: list[LayerGroup]
                      ) -> tuple[int, ...]:
    """Indices of the groups a phase trains: the top :func:`trainable_groups` ones, or the
    named groups (``unfreeze`` a tuple of names) and the head."""
    if not isinstance(unfreeze, tuple):
        return tuple(range(len(groups) - trainable_groups(unfreeze, groups), len(groups)))
    names = [g.name for g in groups]
    unknown = [n for n in unfreeze if n not in names]
    if unknown:
        raise PipelineError(f"unfreeze names {', '.join(map(repr, unknown))}, which is no "
                            f"layer group; valid names: {', '.join(names)}")
    return tuple(i for i, name in enumerate(names) if name in unfreeze or i == len(names) - 1)


def set_trainable(model: nn.Module, groups: list[LayerGroup], top: int | Collection[int]
                  ) -> int:
    """Make the ``top`` groups nearest the head trainable (or the groups at the given
    indices), freeze the rest; return the number of trainable parameters.

    Call :func:`train_mode` rather than ``model.train()`` so frozen BatchNorm layers keep
    their running statistics.
    """
    indices = range(len(groups) - top, len(groups)) if isinstance(top, int) else top
    trainable = {n for i in indices for n in groups[i].params}
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
    ``bn="train"`` lets trainable BatchNorm use and update batch statistics. A BatchNorm
    in the new head (``model.head.norm: batchnorm``) trains whenever the head does.
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
    if bn == "frozen":  # the pretrained ones: the new head's (model.head.norm) has none
        in_head = {id(m) for m in head.modules()}
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in in_head:
                module.eval()
