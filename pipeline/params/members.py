"""params.yaml section members: the settings in which seed-ensemble members differ.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`; the values are checked against the ``train`` and
``model`` sections by :func:`pipeline.core.config.check_members`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MembersConfig:
    """Per member of ``ensemble.seeds`` (by its seed), keys of ``train`` and ``model``
    that replace the sections' own values for that member only (a "hyper-ensemble":
    members that differ in schedule, regularisation or backbone, not only in seed).

    Its own section, so that ``member@<seed>`` stages read it and the main train stage
    does not: changing a member's settings retrains the members, not models/model.pt.
    """

    train: dict[int, dict[str, Any]]  # {<seed>: {<train key>: value}}; {} = none
    model: dict[int, dict[str, Any]]  # {<seed>: {<model key>: value}}; {} = none
