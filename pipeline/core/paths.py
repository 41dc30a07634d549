"""File names shared between stages (the contracts in DESIGN.md), relative to the repo root."""

from pathlib import Path

DEMO_ROOT = Path("data/demo/images")
DEMO_MANIFEST = Path("data/demo/manifest.csv")
DEMO_TEXTS = Path("data/demo/texts")  # BBC News (data.source: demo_text)
PREPARED = Path("data/prepared/manifest.csv")
EMBED_DIR = Path("data/embed")
CLEAN = Path("data/clean/manifest.csv")
REVIEW = Path("data/clean/review.csv")
CALIBRATION = Path("data/clean/calibration.json")  # the near-copy rule split reuses
REVIEW_PAGE = Path("data/clean/review.html")
DECISIONS = Path("data/review/decisions.csv")  # kept in git: a person's verdicts
SPLIT = Path("data/split/manifest.csv")
LEAKAGE = Path("data/split/leakage.csv")
LEAKAGE_PAGE = Path("data/split/leakage.html")
CACHE_DIR = Path("data/cache")
MODEL = Path("models/model.pt")
METRICS_DIR = Path("metrics")  # the headline numbers DVC shows (dvc exp show, metrics diff)
METRICS_ALL = METRICS_DIR / "all"  # every number, same file names: what the report reads
CURVES_DIR = METRICS_DIR / "curves"
CHECKPOINT_DIR = Path("checkpoints/train")  # persisted by DVC: a killed run resumes
REPORTS_DIR = Path("reports")
LOCK = Path("requirements.lock")  # the dependency lock: a dep of every stage
RUN_RECORD = METRICS_DIR / "run.json"  # wall times: never a stage output (provenance.py)
RUN_RECORD_ALL = METRICS_ALL / RUN_RECORD.name  # every stage's times, the machine, commit


# Ensemble members (README "Ensembles and cross-validation"): kind is "seeds" (the member
# stage, one per ensemble.seeds item) or "folds" (the fold stage, one per split.folds item).
def member_model(kind: str, item: int) -> Path:
    """models/<kind>/<item>.pt: a member's model, as models/model.pt."""
    return Path("models") / kind / f"{item}.pt"


def member_metrics(kind: str, item: int) -> Path:
    """metrics/<kind>/<item>/: a member's train.json, eval.json, predictions, curves."""
    return METRICS_DIR / kind / str(item)


def member_checkpoints(kind: str, item: int) -> Path:
    """checkpoints/<kind>/<item>/: a member's resume checkpoint (scratch, as train's)."""
    return CHECKPOINT_DIR.parent / kind / str(item)


ENSEMBLE_DIR = METRICS_DIR / "ensemble"  # ensemble@<kind>: <kind>.json, <kind>_predictions.csv
