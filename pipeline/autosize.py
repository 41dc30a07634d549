"""Resolve ``auto`` image sizes from the backbone and the data: pure rules, no file I/O.

``cache.image_size`` and ``embed.image_size`` accept ``auto``. Photos get the input size
the backbone's pretrained weights were trained at (timm's ``pretrained_cfg``,
torchvision's weights transforms): the size at which its features are best. Small images
(8x8 digits, 28-px Fashion-MNIST) are not blown up to 224: they are upscaled by a fixed
factor (a stride-32 backbone needs a few pixels per feature-map cell, not 28x the
pixels), which keeps the demo's digits near the sizes measured there (cache 48, embed 64:
test accuracy 0.978).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def backbone_input_size(library: str, arch: str, weights: str = "default") -> tuple[int, str]:
    """The square input size (pixels) the backbone's pretrained weights expect.

    Args:
        library: ``timm`` or ``torchvision`` (as ``pipeline.models.resolve_arch`` returns).
        arch: the architecture name in that library.
        weights: ``model.weights``: ``default``, ``none``, a timm tag, a torchvision
            weights name, or a file path (then the architecture's default config).
    Returns:
        (size, source): e.g. (224, "timm pretrained_cfg input_size of tf_efficientnet_lite0").
    """
    if library == "timm":
        import timm

        tagged = arch if weights in ("default", "none") or "/" in weights or \
            weights.endswith((".pth", ".pt", ".safetensors", ".bin")) else f"{arch}.{weights}"
        cfg = timm.models.get_pretrained_cfg(tagged) or timm.models.get_pretrained_cfg(arch)
        if cfg is None:
            return 224, f"timm has no pretrained_cfg for {tagged}: 224"
        return int(cfg.input_size[-1]), f"timm pretrained_cfg input_size of {tagged}"
    if library == "torchvision":
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        name = weights if weights in enum.__members__ else "DEFAULT"
        crop = getattr(enum[name].transforms(), "crop_size", [224])
        return int(crop[0]), f"torchvision {arch} {enum[name].name} transforms crop_size"
    raise ValueError(f"unknown library {library!r}; expected timm or torchvision")


def resolve_image_size(requested: int | str, *, backbone_size: int,
                       short_sides: Sequence[int] | np.ndarray, upscale: float = 6.0,
                       multiple: int = 16, min_size: int = 32) -> tuple[int, str]:
    """The pixel size a stage uses for ``image_size`` (``auto`` or an explicit number).

    Rule for ``auto``: m = the median short side of the images; the size is
    ``upscale * m`` rounded up to a multiple of ``multiple``, at least ``min_size`` and at
    most ``backbone_size``. So photos (m of hundreds of pixels) get the backbone's size,
    8x8 digits get 48, 28-px images 176, 32-px images 192 (capped at the backbone's).

    Args:
        requested: an explicit size (returned as is: an explicit number wins) or "auto".
        backbone_size: from :func:`backbone_input_size`.
        short_sides: (N,) short side in pixels of each decoded image (or of a sample).
        upscale: how many times the median short side small images are enlarged.
    Returns:
        (size, reason): the reason is one line for the log and the stage's metrics.
    """
    if requested != "auto":
        if isinstance(requested, str) or int(requested) < 1:
            raise ValueError(f"image_size {requested!r}: expected a positive integer or auto")
        return int(requested), f"{int(requested)} px as set"
    sides = np.asarray(short_sides, dtype=np.float64)
    if len(sides) == 0:
        return backbone_size, f"{backbone_size} px: no images to measure, the backbone's size"
    median = float(np.median(sides))
    wanted = multiple * math.ceil(upscale * median / multiple)
    size = int(min(backbone_size, max(min_size, wanted)))
    if size == backbone_size:
        why = (f"the backbone's pretrained input size (images' median short side "
               f"{median:g} px)")
    else:
        why = (f"{upscale:g} x the images' median short side {median:g} px, rounded up to "
               f"a multiple of {multiple} (below the backbone's {backbone_size} px)")
    return size, f"auto: {size} px = {why}"
