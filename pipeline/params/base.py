"""params.yaml section base: settings every training-side stage shares (seed, device, determinism).

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.params.fields import SEED_MAX, in_range


@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = field(metadata=in_range(ge=0, le=SEED_MAX))
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool
