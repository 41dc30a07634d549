"""params.yaml section split: how kept images become train, val and test.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.config.load_sections`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import ParamsError
from pipeline.params.fields import in_range


@dataclass(frozen=True)
class Fractions:
    """Share of images per split; they sum to 1."""

    train: float = field(metadata=in_range(gt=0, le=1))
    val: float = field(metadata=in_range(ge=0, lt=1))
    test: float = field(metadata=in_range(ge=0, lt=1))

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ParamsError(
                f"split.fractions: train + val + test must be 1, got "
                f"{self.train} + {self.val} + {self.test} = {total:g}")


@dataclass(frozen=True)
class SplitConfig:
    """How kept images are divided into train, val and test."""

    # auto: predefined when the source recorded a split (train/ val/ test/ folders or a
    # split column), stratified otherwise (resolved and printed by the split stage)
    method: Literal["auto", "random", "stratified", "group", "temporal", "predefined"]
    fractions: Fractions
    group_column: str
    time_column: str
    cutoffs: tuple[str, ...]  # temporal: (val start, test start) dates; empty: by fractions
    embargo_days: float = field(metadata=in_range(ge=0))  # temporal gap left out between splits
    # what the leakage audit does; auto: drop_from_train for predefined splits (a fixed
    # val/test set is never changed, its train-side copies go), fail otherwise
    on_leakage: Literal["auto", "fail", "warn", "drop_from_train"]
    # cosine similarity of embed's features at or above which a val/test image is a near
    # copy of a train image (as clean.near_duplicate_threshold); auto: the clean stage's
    # calibrated rule (data/clean/calibration.json)
    near_duplicate_threshold: float | Literal["auto"] = field(metadata=in_range(gt=0, le=1))

    @property
    def leakage_policy(self) -> str:
        """What on_leakage means for this method: fail, warn or drop_from_train."""
        if self.on_leakage != "auto":
            return self.on_leakage
        return "drop_from_train" if self.method == "predefined" else "fail"

    def __post_init__(self) -> None:
        if self.cutoffs and len(self.cutoffs) != 2:
            raise ParamsError(f"split.cutoffs = {list(self.cutoffs)}: give two dates (val "
                              f"start, test start) or an empty list")
