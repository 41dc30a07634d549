"""Which :class:`~pipeline.modality.ModelKind` builds, feeds and augments a model: by the
cache's or the model file's ``modality`` (:func:`model_kind`).
Images and texts are :data:`KINDS`; another modality's module brings its own
(:mod:`pipeline.modality.plugins`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.modality import BatchAdapter, ModelKind, plugins
from pipeline.modality.image.model import IMAGE_MODELS
from pipeline.modality.text.model import TEXT_MODELS

KINDS: dict[str, ModelKind] = {"image": IMAGE_MODELS, "text": TEXT_MODELS}


def model_kind(modality: str) -> ModelKind:
    """The kind of ``modality`` (``image``, ``text``)."""
    if modality in KINDS:
        return KINDS[modality]
    kind = plugins.load(modality).MODEL  # another modality's module
    if kind.name != modality:
        raise PipelineError(f"modality {modality!r}: its MODEL names itself {kind.name!r}")
    return kind


def meta_modality(meta: dict[str, Any]) -> str:
    """The modality a model file's meta records (an image model's meta names none)."""
    return str(meta.get("preprocessing", {}).get("modality", "image"))


def model_input(model: nn.Module, prep: Any, modality: str) -> BatchAdapter:
    """How cached rows become this model's input: the adapter of ``modality``'s kind (a
    model file's, :func:`meta_modality`)."""
    return model_kind(modality).adapter(model, prep)
