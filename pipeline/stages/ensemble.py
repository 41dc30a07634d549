"""ensemble stage: combine the members' probabilities; score each member and the ensemble.

dvc.yaml runs it once per item of ``ensemble.combine``: ``ensemble@seeds`` over the
models of ``member@<seed>`` (``ensemble.seeds``), ``ensemble@folds`` over those of
``fold@<k>`` (``split.folds``). It reads only the members' prediction tables
(``metrics/<kind>/<n>/predictions.csv``, ``predictions_val.csv``) and writes
``metrics/ensemble/<kind>.json``: test accuracy, macro-F1 and log-loss of every member
and of their combination (``ensemble.average``: the normalised geometric mean of their
probabilities, or their mean), with 95 % bootstrap intervals (the same resamples for
all, so differences are paired), and the ensemble's gain over its best member, picked
on val (and, optimistic, over the member best on test); for folds also the accuracy and
log-loss of each fold's held-out rows, their mean and standard deviation across folds,
and the pooled out-of-fold accuracy. ``metrics/ensemble/<kind>_predictions.csv`` holds
the ensemble's test probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.contracts.labelfiles import write_predictions
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import run_stage
from pipeline.params.base import BaseConfig
from pipeline.params.ensemble import EnsembleConfig
from pipeline.params.evaluate import EvaluateConfig
from pipeline.scoring.ensembles import (
    KINDS,
    combine,
    members_of,
    rounded,
    summary,
)


def run(base: BaseConfig, evaluate: EvaluateConfig, cfg: EnsembleConfig, kind: str,
        split_manifest: Path, out_dir: Path) -> dict[str, Any]:
    """Combine the members of ``kind``; write ``<kind>.json`` and the ensemble's predictions."""
    items = members_of(kind, cfg, split_manifest)
    out, table = combine(kind, items, rule=cfg.average, bootstrap=evaluate.bootstrap,
                         seed=base.seed)
    out = rounded(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{kind}.json").write_text(json.dumps(out, indent=2) + "\n")
    write_predictions(table, out_dir / f"{kind}_predictions.csv")
    print("\n".join(summary(kind, out)))
    return out


def main(kind: str) -> None:
    """Entry point of the DVC stage ``ensemble@<kind>``."""
    base, evaluate, ensemble = load_sections("base", "evaluate", "ensemble")
    run(base, evaluate, ensemble, kind, paths.SPLIT, paths.ENSEMBLE_DIR)


if __name__ == "__main__":
    run_stage("ensemble", main, item="kind", choices=KINDS)
