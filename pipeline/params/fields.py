"""What the section dataclasses share: numeric bounds as field metadata."""

from __future__ import annotations

from typing import Any


def in_range(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
             lt: float | None = None) -> dict[str, Any]:
    """Field metadata for a numeric bound, checked by the loader (pipeline.config)."""
    return {"range": {"gt": gt, "ge": ge, "le": le, "lt": lt}}
