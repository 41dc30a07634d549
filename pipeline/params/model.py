"""params.yaml section model: the backbone and its pretrained weights.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ParamsError
from pipeline.params.fields import in_range


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and where its pretrained weights come from."""

    name: str  # timm or torchvision architecture; prefix "timm:" / "torchvision:" to force
    weights: str  # default | none | a timm tag | a torchvision weights name | a file
    drop_rate: float = field(metadata=in_range(ge=0, lt=1))  # dropout before the new head

    def __post_init__(self) -> None:
        if not self.name:
            raise ParamsError("model.name is empty: give a timm or torchvision model name")
        if not self.weights:
            raise ParamsError("model.weights is empty: use default, none, a tag or a file path")
