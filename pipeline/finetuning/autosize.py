"""Resolve ``auto`` settings from the backbone and the data: pure rules, no file I/O.

``cache.image_size`` and ``embed.image_size`` accept ``auto``. Photos (median short side
at least the backbone's pretrained input size) are cached at the backbone's *test* size:
timm's ``test_input_size`` where its config has one (288 for its 224-px ResNet and
ConvNeXt weights), else the input size x 288/224. A network trained on RandomResizedCrop
sees objects larger than a centre crop of the same size shows them, so its features are
best at a larger test size (the FixRes effect, Touvron et al. 2019): on the ants/bees
photos a logistic probe on tf_efficientnet_lite0 features reaches 0.948 at 224 px and
0.961-0.974 at 288 px (benchmarks/probe_sizes.py). The embed stage, whose features only
feed the clean checks, keeps the cheaper pretrained input size. Photos are never
enlarged past their own median short side.

Small images (8x8 digits, 28-px Fashion-MNIST) are not blown up to 224: they are
upscaled by a fixed factor (a stride-32 backbone needs a few pixels per feature-map
cell, not 28x the pixels), which keeps the demo's digits near the sizes measured there
(cache 48, embed 64: test accuracy 0.978).

The same measurement names the data's *profile*: ``photo`` when the median short side
is at least half the backbone's input size (little or no upscaling: images like the
backbone's pretraining photos), else ``small``. The train stage's ``auto`` settings
(``train.phases``, ``train.hflip``) follow the profile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# timm's test_input_size / input_size for its 224-px ResNet and ConvNeXt weights
TEST_RATIO = 288 / 224


def backbone_input_size(library: str, arch: str, weights: str = "default"
                        ) -> tuple[int, int, str]:
    """The square input sizes (pixels) the backbone's pretrained weights were made for.

    Args:
        library: ``timm`` or ``torchvision`` (as
        ``pipeline.finetuning.backbones.resolve_arch`` returns).
        arch: the architecture name in that library.
        weights: ``model.weights``: ``default``, ``none``, a timm tag, a torchvision
            weights name, or a file path (then the architecture's default config).
    Returns:
        (size, test_size, source): the training input size, the size its features are
        best at on photos (see the module doc), and where they come from, e.g. (224, 288,
        "timm pretrained_cfg of tf_efficientnet_lite0 (no test_input_size: 224 x 288/224)").
    """
    if library == "timm":
        import timm

        tagged = arch if weights in ("default", "none") or "/" in weights or \
            weights.endswith((".pth", ".pt", ".safetensors", ".bin")) else f"{arch}.{weights}"
        cfg = timm.models.get_pretrained_cfg(tagged) or timm.models.get_pretrained_cfg(arch)
        if cfg is None:
            return 224, _test_size(224), f"timm has no pretrained_cfg for {tagged}: 224"
        size = int(cfg.input_size[-1])
        if cfg.test_input_size:
            return size, int(cfg.test_input_size[-1]), f"timm pretrained_cfg of {tagged}"
        return size, _test_size(size), (f"timm pretrained_cfg of {tagged} (no "
                                        f"test_input_size: {size} x 288/224)")
    if library == "torchvision":
        import torchvision

        enum = torchvision.models.get_model_weights(arch)
        name = weights if weights in enum.__members__ else "DEFAULT"
        size = int(getattr(enum[name].transforms(), "crop_size", [224])[0])
        return size, _test_size(size), (f"torchvision {arch} {enum[name].name} transforms "
                                        f"crop_size (test: x 288/224)")
    raise ValueError(f"unknown library {library!r}; expected timm or torchvision")


def _test_size(size: int, multiple: int = 32) -> int:
    return multiple * round(size * TEST_RATIO / multiple)


def data_profile(short_sides: Sequence[int] | np.ndarray, backbone_size: int) -> str:
    """``photo`` or ``small`` (see the module doc); ``photo`` when nothing was measured."""
    sides = np.asarray(short_sides, dtype=np.float64)
    if len(sides) == 0:
        return "photo"
    return "photo" if float(np.median(sides)) >= backbone_size / 2 else "small"


def resolve_image_size(requested: int | str, *, backbone_size: int,
                       short_sides: Sequence[int] | np.ndarray, upscale: float = 6.0,
                       test_size: int = 0, multiple: int = 16, min_size: int = 32
                       ) -> tuple[int, str]:
    """The pixel size a stage uses for ``image_size`` (``auto`` or an explicit number).

    Rule for ``auto``: m = the median short side of the images. Images with m at least
    ``backbone_size`` get ``test_size`` (0: ``backbone_size``), but never more than m
    rounded down to a multiple of ``multiple``. Smaller images get ``upscale * m``
    rounded up to a multiple of ``multiple``, at least ``min_size`` and at most
    ``backbone_size``. So ants/bees photos (m 370) get 288 with test_size 288, 8x8
    digits 48 (upscale 6 or 4.5), 28-px images 176 (6) or 128 (4.5), 32-px
    images 192 (6) or 144 (4.5).

    Args:
        requested: an explicit size (returned as is: an explicit number wins) or "auto".
        backbone_size: the pretrained input size (:func:`backbone_input_size`).
        short_sides: (N,) short side in pixels of each decoded image (or of a sample).
        upscale: how many times the median short side small images are enlarged.
        test_size: the size photos get (:func:`backbone_input_size`'s test size).
    Returns:
        (size, reason): the reason is one line for the log and the stage's metrics.
    """
    if requested != "auto":
        if isinstance(requested, str) or int(requested) < 1:
            raise ValueError(f"image_size {requested!r}: expected a positive integer or auto")
        return int(requested), f"{int(requested)} px as set"
    photo_size = test_size or backbone_size
    sides = np.asarray(short_sides, dtype=np.float64)
    if len(sides) == 0:
        return photo_size, f"{photo_size} px: no images to measure, the backbone's size"
    median = float(np.median(sides))
    if median >= backbone_size:
        size = int(min(photo_size, multiple * math.floor(median / multiple)))
        kind = "test" if test_size else "pretrained input"
        why = (f"the backbone's {kind} size (images' median short side {median:g} px)"
               if size == photo_size else
               f"the images' median short side {median:g} px, rounded down to a multiple "
               f"of {multiple} (below the backbone's {photo_size} px)")
        return size, f"auto: {size} px = {why}"
    wanted = multiple * math.ceil(upscale * median / multiple)
    size = int(min(backbone_size, max(min_size, wanted)))
    if size == backbone_size:
        why = (f"the backbone's pretrained input size (images' median short side "
               f"{median:g} px)")
    else:
        why = (f"{upscale:g} x the images' median short side {median:g} px, rounded up to "
               f"a multiple of {multiple} (below the backbone's {backbone_size} px)")
    return size, f"auto: {size} px = {why}"
