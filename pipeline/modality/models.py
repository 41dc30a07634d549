"""Which :class:`~pipeline.modality.ModelKind` builds, feeds and augments a model: by the
cache's or the model file's ``modality`` (:func:`model_kind`), or by the model itself
(:func:`kind_of`). A new modality adds its kind to :data:`KINDS`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.modality import BatchAdapter, ModelKind
from pipeline.modality.image.model import IMAGE_MODELS
from pipeline.modality.text.model import TEXT_MODELS

KINDS: tuple[ModelKind, ...] = (TEXT_MODELS, IMAGE_MODELS)  # kind_of asks in this order


def model_kind(modality: str) -> ModelKind:
    """The kind of ``modality`` (``image``, ``text``)."""
    for kind in KINDS:
        if kind.name == modality:
            return kind
    raise PipelineError(f"modality {modality!r}: no model kind for it (one of "
                        f"{', '.join(k.name for k in KINDS)})")


def meta_modality(meta: dict[str, Any]) -> str:
    """The modality a model file's meta records (an image model's meta names none)."""
    return str(meta.get("preprocessing", {}).get("modality", "image"))


def kind_of(model: nn.Module) -> ModelKind:
    """The first kind that claims ``model``."""
    return next(kind for kind in KINDS if kind.owns(model))


def model_input(model: nn.Module, prep: Any) -> BatchAdapter:
    """How cached rows become this model's input (its kind's adapter)."""
    return kind_of(model).adapter(model, prep)
