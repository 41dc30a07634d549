"""params.yaml section split: how kept images become train, val and test.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.errors import ParamsError
from pipeline.params.fields import in_range
from pipeline.splitting.assign import parse_times


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
    # temporal gap left out between splits
    embargo_days: float = field(metadata=in_range(ge=0, le=36_500))
    # what the leakage audit does; auto: drop_from_train for predefined splits (a fixed
    # val/test set is never changed, its train-side copies go), fail otherwise
    on_leakage: Literal["auto", "fail", "warn", "drop_from_train"]
    # cosine similarity of embed's features at or above which a val/test image is a near
    # copy of a train image (as clean.near_duplicate_threshold); auto: the clean stage's
    # calibrated rule (data/clean/calibration.json)
    near_duplicate_threshold: float | Literal["auto"] = field(metadata=in_range(gt=0, le=1))
    # k-fold cross-validation of train + val: [0, 1, ..., k-1] gives every train/val row a
    # fold (test rows -1) and dvc.yaml one stage fold@<k> per item; [] = none
    folds: tuple[int, ...] = field(metadata=in_range(le=99))  # k <= 100: a stage each

    @property
    def leakage_policy(self) -> str:
        """What on_leakage means for this method: fail, warn or drop_from_train."""
        if self.on_leakage != "auto":
            return self.on_leakage
        return "drop_from_train" if self.method == "predefined" else "fail"

    def __post_init__(self) -> None:
        folds = list(self.folds)
        if folds and (len(folds) < 2 or folds != list(range(len(folds)))):
            raise ParamsError(f"split.folds = {folds}: give [] or the fold numbers 0 to k-1 "
                              f"in order, k >= 2, e.g. [0, 1, 2, 3, 4] for 5 folds")
        if folds and self.method == "temporal":
            raise ParamsError("split.folds: k-fold cross-validation mixes old and new rows, "
                              "which split.method temporal keeps apart; use [] with it")
        if not self.cutoffs:
            return
        given = list(self.cutoffs)
        if len(given) != 2:
            raise ParamsError(f"split.cutoffs = {given}: give two dates (val start, test "
                              f"start) or an empty list")
        val_start, test_start = parse_times(given)
        for value, seconds in zip(given, (val_start, test_start)):
            if math.isnan(seconds):
                raise ParamsError(f"split.cutoffs = {given}: {value!r} is not a date or time; "
                                  f"use ISO-8601, e.g. 2024-01-31 or 2024-01-31T12:00:00Z")
        if val_start >= test_start:
            raise ParamsError(f"split.cutoffs = {given}: the val start must come before the "
                              f"test start (ascending dates: [val start, test start])")
