"""Which :class:`~pipeline.modality.ModelKind` builds, feeds and augments a model: by the
cache's or the model file's ``modality`` (:func:`model_kind`), or by the model itself
(:func:`kind_of`, the built-in kinds only). Images and texts are :data:`KINDS`; another
modality's module brings its own (:mod:`pipeline.modality.plugins`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.modality import BatchAdapter, ModelKind, plugins
from pipeline.modality.image.model import IMAGE_MODELS
from pipeline.modality.text.model import TEXT_MODELS

KINDS: tuple[ModelKind, ...] = (TEXT_MODELS, IMAGE_MODELS)  # kind_of asks in this order


def model_kind(modality: str) -> ModelKind:
    """The kind of ``modality`` (``image``, ``text``)."""
    for kind in KINDS:
        if kind.name == modality:
            return kind
    kind = plugins.load(modality).MODEL  # another modality's module
    if kind.name != modality:
        raise PipelineError(f"modality {modality!r}: its MODEL names itself {kind.name!r}")
    return kind


def meta_modality(meta: dict[str, Any]) -> str:
    """The modality a model file's meta records (an image model's meta names none)."""
    return str(meta.get("preprocessing", {}).get("modality", "image"))


def kind_of(model: nn.Module) -> ModelKind:
    """The first built-in kind that claims ``model`` (ask :func:`model_kind` with the
    model file's modality for another modality's)."""
    return next(kind for kind in KINDS if kind.owns(model))


def model_input(model: nn.Module, prep: Any, modality: str | None = None) -> BatchAdapter:
    """How cached rows become this model's input: the adapter of ``modality``'s kind (a
    model file's, :func:`meta_modality`), else of the built-in kind that claims it."""
    kind = kind_of(model) if modality is None else model_kind(modality)
    return kind.adapter(model, prep)
