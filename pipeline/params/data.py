"""params.yaml section data: where the images come from.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.errors import ParamsError


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from."""

    source: Literal["demo", "folder", "csv"]
    root: str  # images folder; manifest paths are relative to it
    manifest: str  # CSV manifest, read when source is csv
    # read files that resolve outside root ('..', absolute paths, symbolic links); files
    # reached by '..' or absolute paths are no DVC dependency: changes to them rerun nothing
    allow_outside_root: bool

    def __post_init__(self) -> None:
        if not self.root:
            raise ParamsError("data.root is empty: give the folder that holds the images")
