"""Modalities beyond images and texts, as Python modules: ``data.modality`` names one
(importable from the project's root, where DVC runs the stages), and every stage finds
it here by the name the embed and cache metas record.

Such a module defines, beside its own code:

- ``CODEC``, an :class:`~pipeline.modality.ItemCodec`: the file suffixes it reads,
  decoding, the exact-copy hash, fitting an item to the cache's fixed shape (``fit`` is
  called with size 0: the shape is the codec's own), thumbnails for the pages;
- ``MODEL``, a :class:`~pipeline.modality.ModelKind`: the classifier, its batch adapter
  and augmentation;
- ``embed(df, root, cfg, device)``, the embed stage's pass over the prepared manifest,
  returning :class:`~pipeline.contracts.embedfiles.EmbedOutput` (an ``embedding`` signal
  at least, and calibration copies the clean stage calibrates its near-copy rule on).

The pipeline's stage dependencies follow its own imports, not a plugin's: list the
module's file as a dep of the stages in ``dvc.yaml`` so that an edit to it reruns them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.core.errors import PipelineError

BUILTIN = ("image", "text")
NEEDS = ("CODEC", "MODEL", "embed")  # what a modality module defines


def load(name: str) -> ModuleType:
    """The module of modality ``name`` (not a built-in one), checked for what it needs."""
    if name in BUILTIN:
        raise PipelineError(f"modality {name!r} is built in, not a module")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise PipelineError(f"data.modality = {name!r}: not auto, image or text, and no "
                            f"module of that name can be imported from the project's root "
                            f"({exc})") from None
    if missing := [n for n in NEEDS if not hasattr(module, n)]:
        raise PipelineError(f"data.modality = {name!r}: the module {module.__file__} lacks "
                            f"{', '.join(missing)} (a modality module defines "
                            f"{', '.join(NEEDS)}: pipeline.modality.plugins)")
    return module


def noun(modality: str) -> str:
    """What logs and pages call the items of ``modality``: images, texts, or what another
    modality's ``MODEL.noun`` says."""
    return {"image": "images", "text": "texts"}.get(modality) or str(load(modality).MODEL.noun)
