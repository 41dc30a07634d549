"""params.yaml section evaluate: evaluation on the test split.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.fields import BATCH_MAX, in_range


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of the final model on the test split."""

    batch_size: int = field(metadata=in_range(ge=1, le=BATCH_MAX))
    tta: Literal["none", "flip", "crops"]  # test-time augmentation, reported as tta_*
    # resamples for the 95 % intervals
    bootstrap: int = field(metadata=in_range(ge=100, le=100_000))
    min_accuracy: float = field(metadata=in_range(ge=0, le=1))  # gate: fail below (0: off)
    max_ece: float = field(metadata=in_range(ge=0, le=1))  # gate: fail above (1: off)
