"""params.yaml section data: where the images or texts come from.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.core.errors import ParamsError


@dataclass(frozen=True)
class DataConfig:
    """Where the images or texts come from."""

    source: Literal["demo", "demo_text", "folder", "csv"]
    root: str  # images or texts folder; manifest paths are relative to it
    manifest: str  # CSV or JSON Lines manifest, read when source is csv
    # read files that resolve outside root ('..', absolute paths, symbolic links); files
    # reached by '..' or absolute paths are no DVC dependency: changes to them rerun nothing
    allow_outside_root: bool
    # image | text | auto: decided from the files (pipeline.modality.itemkinds), said in the
    # log; or the name of a Python module importable from the project's root that defines
    # another modality (pipeline.modality.plugins)
    modality: str = "auto"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", self.modality):
            raise ParamsError(f"data.modality = {self.modality!r}: choose auto, image or text, "
                              f"or name the Python module of another modality")
        if not self.root:
            raise ParamsError("data.root is empty: give the folder that holds the images")
