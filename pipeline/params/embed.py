"""params.yaml section embed: the backbone whose features the data-quality checks use.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.fields import BATCH_MAX, in_range


@dataclass(frozen=True)
class EmbedConfig:
    """The pretrained backbone whose pooled features the data-quality checks use."""

    model: str  # a timm or torchvision model name, as model.name
    weights: str  # as model.weights
    # pixels, square; auto: the backbone's pretrained input size, or 8 x the images' median
    # short side for small images (pipeline.finetuning.autosize.resolve_image_size)
    image_size: int | Literal["auto"] = field(metadata=in_range(ge=8, le=1024))
    batch_size: int = field(metadata=in_range(ge=1, le=BATCH_MAX))
    # larger images are unreadable (bombs)
    max_pixels: int = field(metadata=in_range(gt=0, le=10**10))
    # images whose synthetic near copies calibrate clean's near-copy rule
    # (pipeline.dataquality.calibrate)
    calibration_sample: int = field(metadata=in_range(ge=1, le=10000))
