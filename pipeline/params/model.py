"""params.yaml section model: the backbone and its pretrained weights.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.errors import ParamsError
from pipeline.params.fields import BATCH_MAX, in_range


@dataclass(frozen=True)
class HeadConfig:
    """The new classification head on the backbone's pooled features: hidden layers
    (Linear, norm, activation, dropout each), then the Linear to the classes. The default
    (no hidden layers) is the single Linear layer (after model.drop_rate's dropout)."""

    # widths of the hidden layers, input side first
    hidden: tuple[int, ...] = field(default=(), metadata=in_range(le=BATCH_MAX))
    activation: Literal["relu", "gelu", "silu"] = "relu"
    dropout: float = field(default=0.0, metadata=in_range(ge=0, lt=1))  # after each hidden
    norm: Literal["none", "batchnorm", "layernorm"] = "none"  # after each hidden Linear

    def __post_init__(self) -> None:
        if any(width < 1 for width in self.hidden):
            raise ParamsError(f"hidden = {list(self.hidden)}: every width must be >= 1")


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and where its pretrained weights come from."""

    name: str  # timm or torchvision architecture; prefix "timm:" / "torchvision:" to force
    weights: str  # default | none | a timm tag | a torchvision weights name | a file
    drop_rate: float = field(metadata=in_range(ge=0, lt=1))  # dropout before the new head
    head: HeadConfig = HeadConfig()  # the new head's layers (README "Training schedule")

    def __post_init__(self) -> None:
        if not self.name:
            raise ParamsError("model.name is empty: give a timm or torchvision model name")
        if not self.weights:
            raise ParamsError("model.weights is empty: use default, none, a tag or a file path")
