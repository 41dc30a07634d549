import dataclasses

import pytest

from pipeline.core.config import parse_sections
from pipeline.core.errors import ParamsError

from .conftest import REPO, repo_params


def test_repo_params_load_into_typed_frozen_objects():
    base, train = parse_sections(repo_params(), "base", "train")
    assert isinstance(train.lr, float) and isinstance(train.batch_size, int)
    assert train.phases == "auto" and train.hflip == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.lr = 1.0


def test_unknown_key_names_it_and_the_closest_valid_key():
    params = repo_params()
    params["train"]["lrr"] = 0.1
    with pytest.raises(ParamsError, match=r"'train\.lrr'.*did you mean 'train\.lr'"):
        parse_sections(params, "train")


def test_unknown_section_is_an_error():
    params = repo_params()
    params["trian"] = {}
    with pytest.raises(ParamsError, match="trian.*'train'"):
        parse_sections(params, "base")


def test_missing_key_is_named():
    params = repo_params()
    del params["train"]["weight_decay"]
    with pytest.raises(ParamsError, match="missing key 'train.weight_decay'"):
        parse_sections(params, "train")


@pytest.mark.parametrize("value", ["1e-06", 1e-06, "0.000001"])
def test_numbers_in_any_yaml_form_arrive_as_floats(value):
    (train,) = parse_sections(repo_params(**{"train.lr": value}), "train")
    assert train.lr == pytest.approx(1e-6) and isinstance(train.lr, float)


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", -0.1, r"train\.lr = -0\.1 is out of range: it must be greater than 0"),
    ("train.lr", "fast", r"train\.lr = 'fast': expected a number"),
    ("train.batch_size", 2.5, r"train\.batch_size = 2\.5: expected an integer"),
    ("train.batch_size", 0, r"train\.batch_size = 0 is out of range"),
    ("base.device", "tpu", r"base\.device = 'tpu' is not allowed; choose one of: auto, cpu, cuda"),
    ("base.deterministic", "yes", r"base\.deterministic = 'yes': expected true or false"),
    ("split.method", "magic", r"split\.method = 'magic' is not allowed"),
    ("split.fractions.train", 0.9, r"train \+ val \+ test must be 1"),
    ("train.phases", [], r"train\.phases is empty"),
    ("data.root", 3, r"data\.root = 3: expected a string"),
])
def test_bad_values_name_key_value_and_what_is_allowed(key, value, message):
    section = key.split(".")[0]
    with pytest.raises(ParamsError, match=message):
        parse_sections(repo_params(**{key: value}), section)


def test_bad_phase_is_named_by_index():
    two = [{"epochs": 2, "unfreeze": "head"}, {"epochs": 1, "unfreeze": "all"}]
    params = repo_params(**{"train.phases": [dict(p) for p in two]})
    params["train"]["phases"][1]["epochs"] = 0
    with pytest.raises(ParamsError, match=r"train\.phases\[1\]\.epochs = 0 is out of range"):
        parse_sections(params, "train")
    params = repo_params(**{"train.phases": [dict(p) for p in two]})
    params["train"]["phases"][0]["unfreez"] = "all"
    with pytest.raises(ParamsError, match=r"train\.phases\[0\]\.unfreez.*did you mean"):
        parse_sections(params, "train")


def test_load_params_applies_overrides_as_dvc_does(tmp_path):
    from benchmarks.common import load_params

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    params = load_params(["train.lr=1e-06", "train.phases=[{epochs: 1, unfreeze: 2}]"],
                         path=path)
    (train,) = parse_sections(params, "train")
    assert train.lr == 1e-06 and train.phases[0].unfreeze == 2
    assert train.phases[0].lr_mult == 1.0 and train.phases[0].schedule == ""
    with pytest.raises(ParamsError, match="train.lrr=1"):
        load_params(["train.lrr=1"], path=path)


def test_max_rate_has_one_key_per_issue_name():
    # the issue names live in pipeline.contracts.manifest.ISSUES; clean.max_rate mirrors them
    import dataclasses

    from pipeline.contracts.manifest import ISSUES
    from pipeline.params.clean import MaxRates

    assert tuple(f.name for f in dataclasses.fields(MaxRates)) == ISSUES
