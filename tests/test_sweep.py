"""python -m pipeline sweep: the search space, and a 2-trial sweep on a tiny project whose
trials are real DVC experiments."""

import csv
import json
import sys

import pytest
import yaml

from pipeline.cli.sweep import Knob, check_keys, parse_knob, yaml_value
from pipeline.core.errors import PipelineError

from .conftest import repo_params, sh, tiny_project


def test_parse_knob_kinds_and_errors():
    assert parse_knob("train.lr=log:1e-4:1e-2") == Knob("train.lr", "log", 1e-4, 1e-2)
    assert parse_knob("train.layer_decay=0.5:1") == Knob("train.layer_decay", "float", 0.5, 1)
    assert parse_knob("train.batch_size=int:16:64").kind == "int"
    assert parse_knob("train.schedule=cosine,onecycle").choices == ("cosine", "onecycle")
    for bad, says in [("train.lr", "expected KEY="), ("train.lr=1:0.1", "LOW < HIGH"),
                      ("train.lr=log:0:1", "LOW > 0"), ("train.lr=a:b", "two numbers"),
                      ("train.schedule=cosine", "two choices")]:
        with pytest.raises(PipelineError, match=says):
            parse_knob(bad)


def test_misspelt_key_is_refused_with_the_valid_ones():
    params = repo_params()
    check_keys([parse_knob("train.lr=0.1:0.2")], params)
    with pytest.raises(PipelineError, match=r"train\.lrr: no such key .*layer_decay"):
        check_keys([parse_knob("train.lrr=0.1:0.2")], params)
    with pytest.raises(PipelineError, match="trian.lr"):
        check_keys([parse_knob("trian.lr=0.1:0.2")], params)


def test_values_read_back_as_the_same_floats():
    for value in (1e-6, 0.0012345678, 3e-4, 0.5, 2.0):
        text = yaml_value(value)
        assert isinstance(yaml.safe_load(text), float), text  # PyYAML: "1e-06" is a str
        assert yaml.safe_load(text) == pytest.approx(value, rel=1e-3)


@pytest.mark.slow
def test_two_trial_sweep_records_dvc_experiments(tmp_path):
    work = tiny_project(tmp_path / "project", per_class=12,
                        skip_dvc=("cache", "tmp", "offline_plots.html"))
    sh("dvc", "repro", "-q", cwd=work)  # the data stages once, cached for every trial
    # (and the baseline's metrics, which the sweep reads: `dvc repro cache` alone fails)
    sh("git", "add", "-A", cwd=work)
    sh("git", "commit", "-qm", "baseline", cwd=work)

    head_only = "train.phases=[{epochs: 2, unfreeze: head, lr_mult: 5.0}]"
    out = sh(sys.executable, "-m", "pipeline", "sweep", "--name", "tiny", "--trials", "2",
              "--param", "train.lr=log:1e-3:1e-2", "--param", "train.label_smoothing=0:0.2",
              "--set", head_only, "--stage", "evaluate", cwd=work)
    assert "best: tiny-00" in out, out
    rows = list(csv.DictReader((work / "sweeps/tiny/trials.csv").open()))
    assert [r["experiment"] for r in rows] == ["tiny-000", "tiny-001"]
    assert all(r["state"] == "COMPLETE" for r in rows)
    assert (work / "sweeps/tiny/search.png").stat().st_size > 10_000
    # dvc exp show lists both trials with the values the sweep set and the metric it read
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=work, stderr=False))
    exps = {e["name"]: e["data"] for row in shown for e in (row.get("experiments") or [])
            for e in [e["revs"][0]]}
    for row in rows:
        data = exps[row["experiment"]]
        train = data["params"]["params.yaml"]["data"]["train"]
        assert train["lr"] == pytest.approx(float(row["train.lr"]))
        assert train["label_smoothing"] == pytest.approx(float(row["train.label_smoothing"]))
        assert train["phases"] == [{"epochs": 2, "unfreeze": "head", "lr_mult": 5.0}]
        best = data["metrics"]["metrics/train.json"]["data"]["best_val_accuracy"]
        assert best == pytest.approx(float(row["metrics/train.json:best_val_accuracy"]))
    # python -m pipeline exps: both trials, train.lr and the headline metrics in 160
    # columns (the params after train.lr fold into "…" first)
    table = sh("env", "COLUMNS=160", sys.executable, "-m", "pipeline", "exps", "--no-pager",
               cwd=work, stderr=False)
    assert all(len(line) <= 160 for line in table.splitlines()), table
    for shown_name in ("[tiny-000]", "[tiny-001]", "train.lr", "best_epoch", "accuracy",
                       "macro_f1", "log_loss"):
        assert shown_name in table, table
    # the same command again continues the study: 2 trials already, nothing to run
    again = sh(sys.executable, "-m", "pipeline", "sweep", "--name", "tiny", "--trials", "2",
                "--param", "train.lr=log:1e-3:1e-2", "--param", "train.label_smoothing=0:0.2",
                cwd=work)
    assert "[sweep] trial" not in again and "best: tiny-00" in again
