"""params.yaml section ensemble: more models beside the main one, each a DVC stage.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.errors import ParamsError
from pipeline.params.fields import SEED_MAX, in_range


@dataclass(frozen=True)
class EnsembleConfig:
    """Seed members, which member lists a combining stage scores together, and how.

    dvc.yaml makes one stage per list item (``member@<seed>`` from ``seeds``,
    ``fold@<k>`` from ``split.folds``) but cannot make one stage from a whole list: the
    stage that combines a list, ``ensemble@<kind>``, comes from ``combine``.
    """

    # train.seed of each member@<seed>; [] = none
    seeds: tuple[int, ...] = field(metadata=in_range(le=SEED_MAX))
    combine: tuple[Literal["seeds", "folds"], ...]  # ensemble@seeds, ensemble@folds
    # log_probs: softmax of the members' mean log-probability (their normalised geometric
    # mean, the same as averaging logits); probs: the mean of their probabilities
    average: Literal["log_probs", "probs"] = "log_probs"

    def __post_init__(self) -> None:
        for name, values in (("seeds", self.seeds), ("combine", self.combine)):
            if len(set(values)) != len(values):
                raise ParamsError(f"ensemble.{name} = {list(values)} names an item twice")
        if any(s < 0 for s in self.seeds):
            raise ParamsError(f"ensemble.seeds = {list(self.seeds)}: seeds are >= 0")
