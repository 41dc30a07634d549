"""fold stage: one model of a k-fold cross-validation of train + val.

dvc.yaml runs it once per item of ``split.folds`` (``fold@<k>``): the split stage has
given every train and val row a fold (stratified, each duplicate cluster inside one
fold); this stage trains on the rows of the other folds, picks the best epoch on fold k
and scores the model on fold k (``predictions_val.csv``: out-of-fold predictions) and on
the untouched test split, writing ``models/folds/<k>.pt`` and ``metrics/folds/<k>/``
as the member stage does. ``ensemble@folds`` reports the spread across folds and the
average of the fold models on test.
"""

from __future__ import annotations

from pipeline.contracts.cachefiles import fold_splits, read_meta
from pipeline.contracts.manifest import read_folds
from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import PipelineError, run_stage
from pipeline.finetuning.members import train_and_evaluate


def main(fold: int) -> None:
    """Entry point of the DVC stage ``fold@<k>``."""
    base, model, train, evaluate = load_sections("base", "model", "train", "evaluate")
    folds = read_folds(paths.SPLIT)
    k = max(folds.values()) + 1
    if fold >= k:
        raise PipelineError(f"fold {fold} does not exist: {paths.SPLIT} has {k} folds")
    data = fold_splits(paths.CACHE_DIR, read_meta(paths.CACHE_DIR), folds, fold)
    print(f"fold {fold}: training on {len(data[0].labels)} images, {len(data[1].labels)} "
          f"held out")
    train_and_evaluate(base, model, train, evaluate, "folds", fold, data=data)


if __name__ == "__main__":
    run_stage("fold", main, item="fold")
