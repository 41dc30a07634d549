"""File names shared between stages (the contracts in DESIGN.md), relative to the repo root."""

from pathlib import Path

DEMO_ROOT = Path("data/demo/images")
DEMO_MANIFEST = Path("data/demo/manifest.csv")
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
