"""The clean stage's near-copy rule (``data/clean/calibration.json``), read and written
here only; the split stage's leakage audit applies the same rule.

Content: the signals (as :data:`pipeline.contracts.embedfiles.SIGNALS`), one cosine threshold per
signal (null: signal not used), whether the rule was calibrated (``auto``) or set, and
the estimated recall, false-match rate and separability of a calibrated rule.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_text
from pipeline.dataquality.calibrate import Calibration


def write(path: Path, cal: Calibration, *, calibrated: bool) -> None:
    """Write the rule (key order fixed: the stage's output hash depends on it)."""
    raw: dict[str, Any] = {
        "calibrated": calibrated, "signals": list(cal.signals),
        "thresholds": [float(t) if math.isfinite(t) else None for t in cal.thresholds],
        "recall": cal.recall, "false_match_rate": cal.false_match_rate,
        "separable": cal.separable, "recall_by_kind": cal.recall_by_kind,
        "copy_share": cal.copy_share, "note": cal.note}
    write_text(Path(path), json.dumps(raw, indent=1) + "\n")


def read(path: Path) -> Calibration:
    """The clean stage's rule; a clear error when the stage has not run."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run the clean stage first (dvc repro)")
    raw = json.loads(Path(path).read_text())
    return Calibration(tuple(raw["signals"]),
                       tuple(math.inf if t is None else float(t) for t in raw["thresholds"]),
                       float(raw["recall"]), float(raw["false_match_rate"]),
                       bool(raw["separable"]), dict(raw["recall_by_kind"]),
                       float(raw["copy_share"]), str(raw["note"]))
