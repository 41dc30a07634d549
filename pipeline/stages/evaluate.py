"""evaluate stage: score models/model.pt on the test split, calibrate on val
(:mod:`pipeline.scoring.evaluation`): the prediction tables, metrics/eval.json (headline) and
metrics/all/eval.json (every number with its interval), per-class scores and curves.
"""

from __future__ import annotations

from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import run_stage
from pipeline.core.seeding import pin_cpu
from pipeline.scoring.evaluation import evaluate_model


def main() -> None:
    """Entry point of the DVC stage."""
    base, evaluate = load_sections("base", "evaluate")
    pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    evaluate_model(base, evaluate, paths.MODEL, paths.CACHE_DIR, paths.SPLIT, paths.METRICS_DIR)


if __name__ == "__main__":
    run_stage("evaluate", main)
