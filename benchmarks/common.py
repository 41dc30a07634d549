"""Helpers only the benchmarks use, kept out of the pipeline package so that editing
them reruns no DVC stage. Scripts run as ``python benchmarks/<name>.py`` import this as
``common``; tests as ``benchmarks.common``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.config import PARAMS_FILE
from pipeline.errors import ParamsError
from pipeline.quality import out_of_fold_probabilities


def load_params(overrides: Sequence[str] = (), *, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as plain data with ``section.key=value`` overrides (values read as
    YAML, as ``dvc exp run -S`` does), for benchmarks and scripts; validate the result
    with :func:`parse_sections`. An override of a key params.yaml lacks is an error."""
    params = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"override {item!r}: give section.key=value with a key that "
                              f"params.yaml has")
        node[leaf] = yaml.safe_load(value)
    return params


def probe_accuracy(embeddings: np.ndarray, labels: Sequence[str], *, folds: int, seed: int,
                   probe: str, dims: int) -> float:
    """Out-of-fold accuracy of the label check's linear probe: how well it can judge labels."""
    _, y = np.unique(np.asarray(labels, dtype=object), return_inverse=True)
    probs = out_of_fold_probabilities(embeddings, y, folds=folds, seed=seed, probe=probe,
                                      dims=dims)
    return float((probs.argmax(1) == y).mean())
