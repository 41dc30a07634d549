"""What the section dataclasses share: numeric bounds as field metadata, and the upper
limits that keep every number in params.yaml to what the libraries and a run can take."""

from __future__ import annotations

from typing import Any

# Every number has an upper bound: a value that passes the check must not fail later
# (a seed NumPy cannot take) or run for days (a billion bootstrap resamples).
SEED_MAX = 2**32 - 1  # NumPy's and scikit-learn's seeds are 32-bit unsigned
EPOCHS_MAX = 10_000  # epochs, and epoch counts (warmup, decay, patience)
BATCH_MAX = 65_536  # images per batch
LR_MAX = 10.0  # learning rates (as train.lr)


def in_range(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
             lt: float | None = None) -> dict[str, Any]:
    """Field metadata for a numeric bound, checked by the loader (pipeline.core.config); on a
    list or mapping, it bounds each number in it."""
    return {"range": {"gt": gt, "ge": ge, "le": le, "lt": lt}}
