"""params.yaml section cache: decoded, resized arrays and their augmented views.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.fields import SEED_MAX, in_range


@dataclass(frozen=True)
class AugmentConfig:
    """The seeded torchvision transforms.v2 policy that makes the cached training views."""

    crop_scale_min: float = field(metadata=in_range(gt=0, le=1))  # RandomResizedCrop area
    hflip: bool  # random left-right flip
    rotation: float = field(metadata=in_range(ge=0, le=180))  # degrees, uniform in +-rotation
    color_jitter: float = field(metadata=in_range(ge=0, le=1))  # brightness/contrast/saturation
    auto: Literal["none", "randaugment", "trivialaugment"]  # an automatic policy on top
    erasing: float = field(metadata=in_range(ge=0, le=1))  # RandomErasing probability


@dataclass(frozen=True)
class CacheConfig:
    """Decoded, resized arrays that training reads instead of image files."""

    # pixels, square; auto: model.name's pretrained input size, or 4.5 x the images' median
    # short side for small images (pipeline.finetuning.autosize.resolve_image_size)
    image_size: int | Literal["auto"] = field(metadata=in_range(ge=8, le=1024))
    fit: Literal["crop", "pad", "stretch"]  # how a non-square image becomes square
    views: int = field(metadata=in_range(ge=0, le=1000))  # K augmented copies per train image
    # seeds the views: same seed, same bytes
    seed: int = field(metadata=in_range(ge=0, le=SEED_MAX))
    augment: AugmentConfig
    # texts: tokens per text; auto from the train texts' lengths (pipeline.modality.text.cache)
    max_length: int | Literal["auto"] = field(metadata=in_range(ge=8, le=100000))
    truncation: Literal["head", "head_tail"]  # texts: what a long text keeps
