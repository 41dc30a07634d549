"""export stage: TorchScript and ONNX copies of models/model.pt, checked on the test split
(pipeline.serving.exporting): ``models/model.ts``, ``models/model.onnx``, ``models/model.json``;
the check's numbers in ``metrics/all/export.json``. The stage fails when an export
disagrees with PyTorch.
"""

from __future__ import annotations

from pipeline.core import paths
from pipeline.core.config import load_sections
from pipeline.core.errors import run_stage
from pipeline.core.seeding import pin_cpu
from pipeline.params.base import BaseConfig
from pipeline.serving.exporting import export_model


def main() -> None:
    """Entry point of the DVC stage."""
    (base,) = load_sections("base")
    assert isinstance(base, BaseConfig)
    pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    # no headline number (a failed check fails the stage): only in metrics/all/
    export_model(paths.MODEL, paths.CACHE_DIR, paths.MODEL.parent,
                 paths.METRICS_ALL / "export.json")


if __name__ == "__main__":
    run_stage("export", main)
