"""dvc.yaml must declare exactly what each stage reads, or DVC skips stale stages."""

import ast
from pathlib import Path

import pytest
import yaml

from scripts.stage_imports import closure as _closure
from scripts.stage_imports import imports as _imports
from scripts.stage_imports import module_file as _module_file

from .conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _sections_loaded(path: Path) -> list[str]:
    calls = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_sections"]
    assert len(calls) <= 1, f"{path} must load its params once"
    return [arg.value for call in calls for arg in call.args]


# Stages made once per item of a params list (ensembles and cross-validation): the
# list -> the one argument their command passes (pipeline.core.errors.run_stage item=...).
MATRIX = {"member": ("${ensemble.seeds}", "seed"), "fold": ("${split.folds}", "fold"),
          "ensemble": ("${ensemble.combine}", "kind")}


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_command_runs_its_module(stage):
    # a plain stage takes no arguments; a matrix stage only its item, over one params list
    spec, module = DVC[stage], f"pipeline.stages.{stage}"
    if stage in MATRIX:
        values, item = MATRIX[stage]
        assert spec["matrix"] == {item: values}
        assert spec["cmd"] == f"python -m {module} ${{item.{item}}}"
    else:
        assert "matrix" not in spec and "foreach" not in spec
        assert spec["cmd"] == f"python -m {module}"


def test_matrix_stages_are_off_by_default():
    # the default `dvc repro` (and the committed dvc.lock) must not include any of them
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for values, _ in MATRIX.values():
        section, key = values.strip("${}").split(".")
        assert params[section][key] == []


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_declares_exactly_the_modules_it_imports(stage):
    spec = DVC[stage]
    module = f"pipeline.stages.{stage}"
    imported = {str(_module_file(m).relative_to(REPO)) for m in _closure(module)}
    declared = {d for d in spec["deps"] if d.startswith("pipeline/")}
    assert declared == imported, f"missing: {imported - declared}, extra: {declared - imported}"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_declares_exactly_the_params_sections_it_loads(stage):
    loaded = _sections_loaded(REPO / "pipeline" / "stages" / f"{stage}.py")
    assert sorted(DVC[stage].get("params", [])) == sorted(loaded)


def test_no_module_imports_a_stage():
    # what two stages (or a stage and the command line) share lives in a library module
    for path in (REPO / "pipeline").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        stages = {m for m in _imports(path) if m.startswith("pipeline.stages.")}
        assert not stages - {module}, f"{path} imports {sorted(stages)}"


def test_only_stage_shells_read_params():
    for path in (REPO / "pipeline").rglob("*.py"):
        text = path.read_text()
        if path.parent.name != "stages" and path.name != "config.py":
            assert "load_sections(" not in text and "params.yaml\"" not in text, path


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_declares_every_package_init_with_code(stage):
    # importing pipeline.x runs pipeline/__init__.py first (it pins OpenBLAS's kernels);
    # a package whose __init__ holds only its docstring runs nothing
    declared = set(DVC[stage]["deps"])
    for init in (REPO / "pipeline").rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        if body and not (len(body) == 1 and isinstance(body[0], ast.Expr)
                         and isinstance(body[0].value, ast.Constant)):
            assert str(init.relative_to(REPO)) in declared, init


@pytest.mark.parametrize("stage", sorted(DVC))
def test_stage_imports_the_schema_of_every_section_it_loads(stage):
    # config.load_sections imports pipeline/params/<section>.py by name; the stage must
    # import it too, so that dvc.yaml declares it and a schema change reruns the stage.
    loaded = _sections_loaded(REPO / "pipeline" / "stages" / f"{stage}.py")
    assert {f"pipeline.params.{s}" for s in loaded} <= _closure(f"pipeline.stages.{stage}")


@pytest.mark.parametrize("stage", ["embed", "clean", "split", "cache"])
def test_stages_before_train_import_no_training_code(stage):
    # an edit to the training loop, the schedule or the layer groups must not rerun them
    training_only = {f"pipeline.finetuning.{m}"
                     for m in ("engine", "finetune", "models", "training", "trainrun")}
    training_only |= {"pipeline.params.train", "pipeline.params.model"}
    assert not training_only & _closure(f"pipeline.stages.{stage}")
