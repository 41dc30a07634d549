"""The modality seam, proven: a modality the pipeline has never heard of
(tests/vectors_modality.py: numeric vectors in .npy files, with its own codec, adapter,
model and near-copy signal) runs `dvc repro` from prepare to report on a tiny project,
and no module of the pipeline names it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from pipeline.core.errors import ParamsError, PipelineError
from pipeline.modality import plugins
from pipeline.modality.itemkinds import resolve_modality
from pipeline.params.data import DataConfig

from .conftest import HALF_SPLIT, PROJECT_FILES, REPO, commit_project, scratch_project, sh
from .vectors_modality import DIM, NAME


def _write_vectors(root, per_class: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, DIM)) * 3
    for label, centre in enumerate(centres):
        folder = root / f"k{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            np.save(folder / f"v{i:02d}.npy", (centre + rng.normal(0, 0.5, DIM)).astype(np.float32))


def test_the_plugin_lives_in_the_tests_only():
    assert not [p for p in (REPO / "pipeline").rglob("*.py") if NAME in p.read_text()]


def test_a_modality_module_that_is_missing_or_incomplete_is_named(tmp_path, monkeypatch):
    df = pd.DataFrame({"path": ["a/x.npy"], "label": ["a"]})
    with pytest.raises(PipelineError, match="'no_such_modality': not auto, image or text, "
                                            "and no module of that name can be imported"):
        resolve_modality("no_such_modality", df)
    (tmp_path / "half_modality.py").write_text("CODEC = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PipelineError, match="half_modality.py lacks MODEL, embed"):
        plugins.load("half_modality")
    with pytest.raises(ParamsError, match="choose auto, image or text, or name the Python"):
        DataConfig(source="folder", root="x", manifest="", allow_outside_root=False,
                   modality="../vectors.py")


@pytest.mark.slow
def test_dvc_repro_runs_a_second_modality_from_prepare_to_report(tmp_path):
    work = scratch_project(tmp_path / "project",
                           files=tuple(f for f in PROJECT_FILES if f != ".gitignore"))
    shutil.copy(REPO / "tests" / f"{NAME}.py", work / f"{NAME}.py")  # importable from root
    _write_vectors(work / "vectors", per_class=20)
    shutil.copy(work / "vectors/k0/v00.npy", work / "vectors/k0/copy.npy")  # an exact copy
    (work / "vectors/k1/broken.npy").write_bytes(b"not an array")
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"].update(source="folder", root="vectors", modality=NAME)
    params["embed"]["calibration_sample"] = 16
    params["split"]["fractions"] = HALF_SPLIT
    params["train"].update(batch_size=8, phases=[
        {"epochs": 3, "unfreeze": "head", "lr_mult": 5.0},
        {"epochs": 2, "unfreeze": "all", "lr_mult": 1.0}])
    params["clean"]["max_rate"] = {k: 1.0 for k in params["clean"]["max_rate"]}
    commit_project(work, params)

    log = sh("dvc", "repro", cwd=work)
    assert f"prepared 62 vectors in 3 classes from vectors (data.modality: data.modality = " \
           f"{NAME}" in log
    clean = pd.read_csv(work / "data/clean/manifest.csv", keep_default_na=False)
    flagged = dict(zip(clean["path"], clean["issues"]))
    assert flagged["k1/broken.npy"] == "unreadable"
    assert "exact_duplicate" in flagged["k0/copy.npy"] + flagged["k0/v00.npy"]
    cache = json.loads((work / "data/cache/meta.json").read_text())
    assert cache["modality"] == NAME
    assert np.load(work / "data/cache/train_images.npy").shape[1:] == (DIM,)
    model = torch.load(work / "models/model.pt", weights_only=True)
    assert model["meta"]["preprocessing"]["modality"] == NAME
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert metrics["accuracy"] >= 0.8  # three well-separated clusters
    assert json.loads((work / "metrics/all/export.json").read_text())["onnx_within_tolerance"]
    report = (work / "reports/report.html").read_text()
    assert "vectors in 3 classes" in report and "data:image/png;base64" in report
    assert "Items to review" in (work / "data/clean/review.html").read_text()
    assert "Running stage" not in sh("dvc", "repro", cwd=work)
