"""The command line: stage --help, python -m pipeline (init, run), the closing summary,
the review page's escaping and scripts/onnx_predict.py on a bad file."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline import __main__ as cli
from pipeline.cli.init_data import set_keys
from pipeline.core.errors import run_stage
from pipeline.reporting.report import issues_html
from pipeline.reporting.review_page import review_page
from pipeline.reporting.summary import SUMMARY_LATER, summary_lines

from .conftest import REPO, write_tree

STAGES = sorted(p.stem for p in (REPO / "pipeline" / "stages").glob("*.py")
                if p.stem != "__init__")


# ----------------------------------------------------------------------------- stages


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help_exits_0_before_any_work(stage, tmp_path, monkeypatch, capsys):
    # in an empty folder: a stage that went on would stop on the missing params.yaml
    # (exit 2) or write files
    module = importlib.import_module(f"pipeline.stages.{stage}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        run_stage(stage, module.main, argv=["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert module.__doc__.split("\n")[0] in out and "params.yaml sections read" in out
    assert list(tmp_path.iterdir()) == []


def test_train_help_on_the_command_line_trains_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "-h"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "train stage: fine-tune" in done.stdout and "base, model, train" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_stage_refuses_unknown_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    demo = importlib.import_module("pipeline.stages.demo")
    with pytest.raises(SystemExit) as done:
        run_stage("demo", demo.main, argv=["--epochs", "3"])
    assert done.value.code == 2
    assert "unrecognized arguments: --epochs 3" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- python -m pipeline


def test_pipeline_help_lists_the_subcommands_with_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("init", "run", "exps", "predict", "serve", "export"):
        assert f"    {command} " in out
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    assert "(default: models/model.pt)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # exps: its help, not dvc's table
        cli.main(["exps", "--help"])
    assert done.value.code == 0 and "--only-changed" in capsys.readouterr().out


def test_export_help_does_no_work_and_a_missing_model_is_one_line(tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.chdir(tmp_path)  # no model, no cache here
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for default in ("(default: models/model.pt)", "(default: data/cache)",
                    "(default: exported)"):
        assert default in " ".join(out.split())
    with pytest.raises(SystemExit) as done:
        cli.main(["export", "--out-dir", "out"])
    assert done.value.code == 2
    assert capsys.readouterr().err == ("error: models/model.pt not found: train first "
                                       "(dvc repro train) or pass --model\n")
    assert list(tmp_path.iterdir()) == []


def test_run_passes_its_arguments_to_dvc_repro_and_exits_with_its_code(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no report: no summary to print
    calls = []
    monkeypatch.setattr(cli.subprocess, "call",
                        lambda args, env: calls.append(args) or 3)
    with pytest.raises(SystemExit) as done:
        cli.main(["run", "train", "--force"])
    assert done.value.code == 3
    assert calls == [[sys.executable, "-m", "dvc", "repro", "train", "--force"]]


def test_run_prints_the_closing_summary_last_and_the_report_stage_leaves_it(
        monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    report = tmp_path / "reports/report.html"
    monkeypatch.setitem(cli.PAGES, "report", report)
    monkeypatch.setattr(cli, "read_summary", lambda: ["== summary ==", "look at: report"])
    envs = []

    def dvc_repro(args, env):
        envs.append(env)
        report.parent.mkdir()
        report.write_text("<html>")
        print("To track the changes with git, run:", flush=True)
        return 0

    monkeypatch.setattr(cli.subprocess, "call", dvc_repro)
    with pytest.raises(SystemExit) as done:
        cli.main(["run"])
    assert done.value.code == 0 and envs[0][SUMMARY_LATER] == "1"
    assert capsys.readouterr().out.splitlines()[-2:] == ["== summary ==", "look at: report"]


def test_run_writes_dvcignore_rules_for_a_new_fifo_before_dvc_hashes_the_data(
        monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images/a").mkdir(parents=True)
    os.mkfifo(tmp_path / "images/a/pipe.png")  # DVC's hashing would block reading it
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", root="images")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    seen = []
    monkeypatch.setattr(cli.subprocess, "call",
                        lambda args, env: seen.append(Path(".dvcignore").read_text()) or 0)
    with pytest.raises(SystemExit):
        cli.main(["run"])
    assert "images/a/pipe.png" in seen[0]  # written before dvc repro started


def _params(tmp_path: Path) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    return params


def _init(*args: str) -> None:
    cli.main(["init", *args, "--sample", "5"])


def _changed_lines(before: str, after: str) -> list[str]:
    old, new = before.split("\n"), after.split("\n")
    assert len(old) == len(new)
    return [b for a, b in zip(old, new) if a != b]


def test_init_folder_writes_data_keeping_comments(tmp_path, capsys):
    params = _params(tmp_path)
    before = params.read_text()
    tree = write_tree(tmp_path / "images", classes=3, per_class=4)
    (tree / "c1" / "broken.png").write_bytes(b"not an image")
    _init(str(tree), "--params", str(params))
    after = params.read_text()
    assert yaml.safe_load(after)["data"] == {**yaml.safe_load(before)["data"],
                                             "source": "folder", "root": "images"}
    # only the two lines changed, each keeping its comment in its column
    changed = _changed_lines(before, after)
    assert changed == ["  source: folder          # demo | demo_text (BBC News, root "
                       "data/demo/texts) | folder | csv",
                       "  root: images            # the images or texts; manifest paths are "
                       "relative to it"]
    out = capsys.readouterr().out
    assert "13 files in 3 classes" in out and "class-per-folder" in out
    assert "median 20 px" in out and "unreadable files: 1" in out
    assert "c1/broken.png: not an image" in out and "dvc repro" in out


def test_init_dry_run_writes_nothing(tmp_path, capsys):
    params = _params(tmp_path)
    before = params.read_text()
    _init(str(write_tree(tmp_path / "images", classes=2, per_class=3)), "--params",
          str(params), "--dry-run")
    assert params.read_text() == before
    assert "would set" in capsys.readouterr().out


def test_init_split_folders_and_csv(tmp_path, capsys):
    params = _params(tmp_path)
    root = tmp_path / "split"
    write_tree(root / "train", classes=2, per_class=4)
    write_tree(root / "val", classes=2, per_class=2, first=10)
    _init(str(root), "--params", str(params), "--dry-run")
    out = capsys.readouterr().out
    assert "train/ (8) val/ (4): val/ is the held-out set, so it becomes test" in out
    assert "train  val  total" in out

    rows = [{"path": f"c{k}/img_{i:02d}.png", "label": f"c{k}"} for k in range(2)
            for i in range(3)]
    write_tree(tmp_path / "flat", classes=2, per_class=3)
    pd.DataFrame(rows).to_csv(tmp_path / "flat" / "list.csv", index=False)
    _init(str(tmp_path / "flat" / "list.csv"), "--params", str(params))
    data = yaml.safe_load(params.read_text())["data"]
    assert (data["source"], data["root"], data["manifest"]) == ("csv", "flat",
                                                                 "flat/list.csv")
    assert "6 files in 2 classes" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or folder"),
    ("empty", "the folder is empty"),
    ("one_class", "only class 'c0'"),
])
def test_init_errors(tmp_path, capsys, case, message):
    params = _params(tmp_path)
    before = params.read_text()
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "one_class":
        write_tree(target, classes=1, per_class=3)
    with pytest.raises(SystemExit) as done:
        _init(str(target), "--params", str(params))
    assert done.value.code == 2
    assert message in capsys.readouterr().err
    assert params.read_text() == before


def test_set_keys_quotes_what_yaml_would_misread():
    text = "data:\n  source: demo  # which\n  root: x   # where\nsplit:\n  root: y\n"
    new = set_keys(text, "data", {"root": "my images: 2024 #1"})
    assert yaml.safe_load(new) == {"data": {"source": "demo", "root": "my images: 2024 #1"},
                                   "split": {"root": "y"}}
    assert new.split("\n")[2].endswith("# where")


# ----------------------------------------------------------------------------- summary


def test_summary_is_short_and_names_the_pages():
    results = {"accuracy": 0.9, "accuracy_ci_low": 0.8, "accuracy_ci_high": 0.95,
               "macro_f1": 0.88, "macro_f1_ci_low": 0.77, "macro_f1_ci_high": 0.93,
               "log_loss": 0.3, "ece": 0.05, "ece_calibrated": 0.02, "temperature": 1.3,
               "test_images": 40}
    clean = {"images": 200, "kept": 190, "unreadable": 2, "exact_duplicate": 0,
             "near_duplicate": 8, "label_issue": 5, "outlier": 0, "embed_image_size": 64,
             "near_duplicate_separable": True}
    split = {"train_images": 120, "val_images": 30, "test_images": 40,
             "leak_exact_duplicate": 0, "leak_near_duplicate": 3, "dropped_from_train": 3}
    pages = {"report": Path("reports/report.html"), "review": Path("data/clean/review.html"),
             "leakage": Path("data/split/leakage.html")}
    lines = summary_lines(results, clean, split, classes=4, pages=pages)
    text = "\n".join(lines)
    assert len(lines) < 20
    assert "200 images in 4 classes, 190 kept" in text
    assert "accuracy 0.900 [0.800, 0.950], macro-F1 0.880 [0.770, 0.930]" in text
    assert "unreadable 2, near_duplicate 8, label_issue 5" in text
    assert "exact_duplicate" not in text and "outlier" not in text  # zero counts
    assert "leak_near_duplicate 3, dropped_from_train 3" in text
    assert all(str(p) in text for p in pages.values())


# ----------------------------------------------------------------------------- pages


def test_review_page_escapes_and_fits_long_names_and_tiny_images(tmp_path):
    long = "a_very_long_file_name_" * 5 + ".png"
    (tmp_path / "c0").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c0" / long)
    review = pd.DataFrame([{"image_id": "id1", "path": f"c0/{long}", "issue": "label_issue",
                            "score": 0.9, "label": "c0", "suggested_label": "<b>c1</b>",
                            "decision": ""}])
    page = review_page(review, tmp_path, actions="keep, drop or relabel:<label>")
    assert "relabel:&lt;label&gt;" in page and "relabel:<label>" not in page
    assert "&lt;b&gt;c1&lt;/b&gt;" in page and "<b>c1</b>" not in page
    assert f'title="c0/{long}"' in page and "text-overflow:ellipsis" in page
    assert "image-rendering:pixelated" in page and "min-width:96px" in page


def test_report_label_issue_table_has_suggestions_and_says_when_cut(tmp_path):
    write_tree(tmp_path, classes=2, per_class=10)
    clean = pd.DataFrame([{"image_id": f"{k}{i:02d}", "path": f"c{k}/img_{i:02d}.png",
                           "label": f"c{k}", "keep": True, "cluster_id": "", "error": "",
                           "issues": "label_issue", "suggested_label": f"c{1 - k}"}
                          for k in range(2) for i in range(10)])
    (part,) = issues_html(clean, tmp_path)
    assert "showing 16 of 20" in part
    assert "<th>suggested_label</th>" in part and "<td>c1</td>" in part


# ----------------------------------------------------------------------------- onnx_predict


def _tiny_onnx(folder: Path) -> tuple[Path, Path]:
    """A 2-class ONNX model (mean colour -> logits) and its model.json, made by hand."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.array([[1, -1], [0, 0], [-1, 1]], np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    spec = {"classes": ["red", "blue"], "image_size": 8, "fit": "crop",
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / "model.json").write_text(json.dumps(spec))
    return folder / "model.onnx", folder / "model.json"


def test_onnx_predict_goes_on_after_a_bad_file(tmp_path):
    pytest.importorskip("onnxruntime")
    model, spec = _tiny_onnx(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (12, 10), (250, 0, 0)).save(images / "a_red.png")
    (images / "b_broken.png").write_bytes(b"not a png")
    Image.new("RGB", (9, 9), (0, 0, 250)).save(images / "c_blue.png")
    script = str(REPO / "scripts" / "onnx_predict.py")
    done = subprocess.run([sys.executable, script, str(model), str(spec), str(images)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    rows = list(pd.read_csv(io.StringIO(done.stdout), dtype=str,
                            keep_default_na=False).itertuples(index=False))
    assert [(Path(r.path).name, r.pred) for r in rows] == [
        ("a_red.png", "red"), ("b_broken.png", ""), ("c_blue.png", "blue")]
    assert "b_broken.png" in done.stderr and rows[1].error
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "image files or folders" in helped.stdout
