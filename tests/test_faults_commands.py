"""Fault corpus, params files and commands (issue 26, items 10, 11, 12 and 15): numbers
beyond what the libraries take, YAML aliases and duplicate keys, predict's and sweep's
options, split values in a CSV, init pointed at the project's own data, images one
pixel wide, special files as weights or model, and the width of ``exps``' table.

Each case makes its inputs under ``tmp_path/src``, then acts on them with outputs under
``tmp_path/out`` and returns what a user reads: the one-line error, or the safe result.
``{src}`` and ``{out}`` in the expected text stand for those folders. Nothing under
``src`` may change (special files are compared by type, never opened).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.contracts.embedfiles import read_meta
from pipeline.contracts.modelfile import save_model
from pipeline.core.config import SECTIONS, load_sections, parse_sections, section_class
from pipeline.core.errors import PipelineError
from pipeline.finetuning.backbones import create_model
from pipeline.modality.image.signals import ALIGNED_SIZE, ALIGNED_VIEWS, aligned_views
from pipeline.params.model import ModelConfig
from pipeline.stages import embed, prepare

from .conftest import REPO, class_image, matches, repo_params, write_tree

# ----------------------------------------------------------------------------- helpers


def _params(src: Path, **overrides: Any) -> Path:
    path = src / "params.yaml"
    path.write_text(yaml.safe_dump(repo_params(**overrides), sort_keys=False))
    return path


def _load(src: Path) -> str:
    """What a stage start says about src/params.yaml: its error, or "valid"."""
    load_sections("data", path=src / "params.yaml")
    return "valid"


def _params_text(src: Path, text: str) -> None:
    """params.yaml as the repo's, with its text edited (aliases, repeated keys)."""
    (src / "params.yaml").write_text(text)


def _repo_line(start: str) -> int:
    """Line number of the repo params.yaml's one line that starts with ``start``; "" gives
    the number of lines (so the cases follow edits of params.yaml)."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    if not start:
        return len(lines)
    found = [i for i, line in enumerate(lines, 1) if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def _repo_text(**replace: str) -> str:
    """The repo's params.yaml text with whole lines replaced (``old line``: new text)."""
    text = (REPO / "params.yaml").read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


LAUGHS = "".join([  # each level 10 aliases of the one before: level 8 = 10**8 values
    "laughs:\n  l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]\n",
    *(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))])


def _run_cli(*args: str) -> tuple[int | str | None, str, str]:
    """``python -m pipeline ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli(list(args))
        except SystemExit as exc:
            code = exc.code
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue(), err.getvalue()


def _cli(*args: str) -> str:
    """The last line ``python -m pipeline ARGS`` printed: stdout's on success; on failure
    stderr's, which must be that one line (or argparse's usage, then that line)."""
    code, out, err = _run_cli(*args)
    if code:
        lines = err.strip().splitlines()
        assert code == 2 and (len(lines) == 1 or lines[0].startswith("usage:")), lines
        return lines[-1]
    return out.strip().splitlines()[-1]


def _model(path: Path, classes: tuple[str, ...] = ("k0", "k1", "k2")) -> Path:
    """A models/model.pt as the train stage writes it (a tiny timm test model, 32 px)."""
    model, prep, info = create_model(ModelConfig("test_efficientnet", "none", 0.0),
                                     num_classes=len(classes))
    meta = {"classes": list(classes), "arch": info["arch"],
            "model": {"name": "test_efficientnet", "weights": "none", "drop_rate": 0.0},
            "preprocessing": {"image_size": 32, "fit": "crop", "mean": list(prep.mean),
                              "std": list(prep.std)}}
    save_model(path, model.state_dict(), meta)
    return path


def _predict(src: Path, out: Path, *options: str, model: str = "model.pt",
             run: Callable[..., Any] = _cli) -> Any:
    """predict on src/images with src/model.pt (or ``model``); a FIFO as the model is
    unblocked (EOF) after 60 s, so that a regression fails instead of hanging."""
    target = src / model
    guard = threading.Timer(60, lambda: os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK)))
    if stat.S_ISFIFO(os.lstat(target).st_mode):
        guard.start()
    try:
        return run("predict", str(src / "images"), "--model", str(target), "--out",
                   str(out / "p.csv"), "--device", "cpu", *options)
    finally:
        guard.cancel()


def _predicted(src: Path, out: Path) -> str:
    """predict's warnings, its closing line, and per CSV row the file and a label or
    the error."""
    code, stdout, stderr = _predict(src, out, run=_run_cli)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    rows = list(csv.DictReader((out / "p.csv").open()))
    cells = "; ".join(f"{Path(r['path']).name}: " + ("a label" if r["pred"] else r["error"])
                      for r in rows)
    return " | ".join([*warnings, stdout.strip().splitlines()[-1], cells])


def _images(src: Path, *extra: tuple[str, Callable[[Path], object]]) -> None:
    """src/model.pt and src/images/ holding one PNG and the ``extra`` (name, make) files."""
    _model(src / "model.pt")
    (src / "images").mkdir()
    Image.fromarray(class_image(0, 0)).save(src / "images" / "a.png")
    for name, make in extra:
        make(src / "images" / name)


def _apng(path: Path) -> None:
    frames = [Image.fromarray(class_image(1, k)) for k in range(3)]
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:])


def _split_csv(src: Path, splits: list[str]) -> None:
    """src/images (2 classes x 3) and src/manifest.csv with these split values."""
    root = write_tree(src / "images", classes=2, per_class=3)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    lines = [f"{f},{f.split('/')[0]},{s}" for f, s in zip(files, splits)]
    (src / "manifest.csv").write_text("\n".join(["path,label,split", *lines]) + "\n")


def _prepare_csv(src: Path, out: Path) -> str:
    params = repo_params(**{"data.source": "csv", "data.root": str(src / "images"),
                            "data.manifest": str(src / "manifest.csv")})
    (data,) = parse_sections(params, "data")
    df = prepare.run(data, out / "prepared.csv", ignore=out / ".dvcignore")
    return f"{len(df)} rows, split column: {sorted(set(df['split']))}"


def _own_project(src: Path) -> None:
    """src as a project: params.yaml, data/ with stage outputs and data/raw/ a user's
    class tree (a usual DVC layout)."""
    _params(src)
    write_tree(src / "data" / "prepared", classes=2, per_class=2)
    (src / "data" / "prepared" / "manifest.csv").write_text("image_id,path,label\n")
    write_tree(src / "data" / "raw", classes=2, per_class=3)


def _init(src: Path, target: str) -> str:
    return _cli("init", target.format(src=src), "--params", str(src / "params.yaml"),
                "--sample", "2", "--dry-run")


def _thin(src: Path, out: Path) -> str:
    """The near-copy views of src/thin.png (embed's pixel signal for small images)."""
    with Image.open(src / "thin.png") as img:
        pixels = np.asarray(img.convert("RGB"))
    views = aligned_views([pixels])
    assert views.shape == (1, ALIGNED_VIEWS, ALIGNED_SIZE ** 2)
    return f"{pixels.shape[1]}x{pixels.shape[0]}: " + (
        "finite views" if np.isfinite(views).all() else "NaN in the views")


def _save_thin(shape: tuple[int, int]) -> Callable[[Path], None]:
    def make(src: Path) -> None:
        rng = np.random.default_rng(shape[0] * 100 + shape[1])
        Image.fromarray(rng.integers(0, 255, (*shape, 3)).astype(np.uint8)).save(
            src / "thin.png")
    return make


def _embed_thin(src: Path, out: Path) -> str:
    """prepare and the real embed on a tree holding images 1 pixel wide and tall."""
    params = repo_params(**{"data.source": "folder", "data.root": str(src / "images"),
                            "embed.image_size": 32})
    data, cfg = parse_sections(params, "data", "embed")
    prepare.run(data, out / "prepared.csv", ignore=out / ".dvcignore")
    embed.run(data, cfg, out / "prepared.csv", out / "embed")
    meta = read_meta(out / "embed")
    return f"{sum(meta.valid)} of {len(meta.valid)} images embedded, errors: " \
           f"{[e for e in meta.error if e]}"


def _thin_tree(src: Path) -> None:
    root = write_tree(src / "images", classes=2, per_class=3)
    for name, shape in (("wide.png", (20, 1)), ("tall.png", (1, 20)), ("dot.png", (1, 1))):
        Image.fromarray(np.full((*shape, 3), 90, np.uint8)).save(root / "c0" / name)


def _sweep(*params: str) -> Callable[[Path, Path], str]:
    def act(src: Path, out: Path) -> str:
        return _cli("sweep", "--name", "s", *[a for p in params for a in ("--param", p)])
    return act


def _weights_at(make: Callable[[Path], object], name: str = "w.pt"
                ) -> tuple[Callable[[Path], None], Callable[[Path, Path], str]]:
    def setup(src: Path) -> None:
        make(src / name)
        _params(src, **{"model.weights": str(src / name)})
    return setup, lambda src, out: _load(src)


def _nothing(src: Path) -> None:
    """No inputs: the command's options are the fault."""

# ----------------------------------------------------------------------------- cases

SEED_RANGE = "it must be at least 0 and at most 4294967295"
SUFFIXES = ".png .apng .jpg .jpeg .jpe .jfif .bmp .gif .tif .tiff .webp .avif"
ARGPARSE = "python -m pipeline {command}: error: argument {option}: "

# name -> (make(src), act(src, out) -> outcome, expected outcome)
CASES: dict[str, tuple[Callable[[Path], object], Callable[[Path, Path], str], str]] = {
    # 10. every number bounded; aliases and repeated keys refused, naming the key
    "params_seed_beyond_32_bits": (
        lambda src: _params(src, **{"train.seed": 2**32}), lambda src, out: _load(src),
        f"train.seed = 4294967296 is out of range: {SEED_RANGE}"),
    "params_seed_in_a_list": (
        lambda src: _params(src, **{"ensemble.seeds": [0, 2**40], "ensemble.combine":
                                    ["seeds"]}), lambda src, out: _load(src),
        "ensemble.seeds[1] = 1099511627776 is out of range: it must be at most 4294967295"),
    "params_bootstrap_without_end": (
        lambda src: _params(src, **{"evaluate.bootstrap": 10**9}), lambda src, out: _load(src),
        "evaluate.bootstrap = 1000000000 is out of range: it must be at least 100 and at "
        "most 100000"),
    "params_number_in_a_mapping": (
        lambda src: _params(src, **{"train.class_weights": {"c0": 1e9}}),
        lambda src, out: _load(src),
        "train.class_weights.c0 = 1000000000.0 is out of range: it must be at most 1000000"),
    "params_integer_of_5000_digits": (
        lambda src: _params_text(src, _repo_text(**{"  seed: 0\n": f"  seed: {'9' * 5000}\n"})),
        lambda src, out: _load(src),
        "{src}/params.yaml: a value cannot be read: Exceeds the limit (4300 digits) for "
        "integer string conversion: value has 5000 digits"),
    "params_integer_beyond_any_float": (
        lambda src: _params_text(src, _repo_text(**{"  lr: 0.002 ": f"  lr: 1{'0' * 400} "})),
        lambda src, out: _load(src), f"train.lr = 1{'0' * 400}: expected a finite number"),
    "params_billion_laughs": (
        lambda src: _params_text(src, LAUGHS + _repo_text(**{
            "  lr: 0.002 ": "  lr: *l8 "})), lambda src, out: _load(src),
        "{src}/params.yaml: laughs.l3[0] is an alias that stands for 1111 values (more than "
        "1000): write them out"),
    "params_alias_inside_itself": (
        lambda src: _params_text(src, _repo_text(**{"  hidden: []": "  hidden: &h [1, *h]"})),
        lambda src, out: _load(src),
        "{src}/params.yaml: model.head.hidden[1] is an alias inside its own anchor (a value "
        "that contains itself): write it out"),
    "params_small_alias": (  # a shared value is fine: embed.model's name for model.name
        lambda src: _params_text(src, _repo_text(**{
            "  model: tf_efficientnet_lite0\n": "  model: &arch tf_efficientnet_lite0\n",
            "  name: tf_efficientnet_lite0 ": "  name: *arch "})),
        lambda src, out: _load(src), "valid"),
    "params_duplicate_key": (
        lambda src: _params_text(src, _repo_text(**{"  seed: 0\n": "  seed: 0\n  lr: 0.1\n"})),
        lambda src, out: _load(src),
        "{src}/params.yaml: train.lr is given twice (lines 5 and 7); DVC refuses duplicate "
        "keys: keep one"),
    "params_duplicate_section": (
        lambda src: _params_text(src, (REPO / "params.yaml").read_text() + "base:\n  seed: 1\n"),
        lambda src, out: _load(src),
        f"{{src}}/params.yaml: base is given twice (lines {_repo_line('base:')} and "
        f"{_repo_line('') + 1}); DVC refuses duplicate keys: keep one"),
    "params_duplicate_in_flow_mapping": (
        lambda src: _params_text(src, _repo_text(**{
            "  train: {}               #": "  train: {1: {}, 1: {}}  #"})),
        lambda src, out: _load(src),
        f"{{src}}/params.yaml: members.train.1 is given twice (lines {_repo_line('  train: {}')}"
        f" and {_repo_line('  train: {}')}); DVC refuses duplicate keys: keep one"),
    # 11. predict: options checked by argparse, special files never opened, skips said
    "predict_top_k_0": (
        _images, lambda src, out: _predict(src, out, "--top-k", "0"),
        ARGPARSE.format(command="predict", option="--top-k") + "0 is out of range: give 1 "
                                                               "or more"),
    "predict_top_k_negative": (
        _images, lambda src, out: _predict(src, out, "--top-k", "-1"),
        ARGPARSE.format(command="predict", option="--top-k") + "-1 is out of range: give 1 "
                                                               "or more"),
    "predict_batch_size_0": (
        _images, lambda src, out: _predict(src, out, "--batch-size", "0"),
        ARGPARSE.format(command="predict", option="--batch-size") + "0 is out of range: "
                                                                    "give from 1 to 65536"),
    "predict_batch_size_negative": (
        _images, lambda src, out: _predict(src, out, "--batch-size", "-1"),
        ARGPARSE.format(command="predict", option="--batch-size") + "-1 is out of range: "
                                                                    "give from 1 to 65536"),
    "predict_top_k_not_a_number": (
        _images, lambda src, out: _predict(src, out, "--top-k", "two"),
        ARGPARSE.format(command="predict", option="--top-k") + "'two' is not a whole number"),
    "predict_model_fifo": (
        lambda src: (_images(src), os.remove(src / "model.pt"), os.mkfifo(src / "model.pt")),
        lambda src, out: _predict(src, out),
        "error: {src}/model.pt: a FIFO (named pipe), not a regular file: never opened"),
    "export_model_fifo": (
        lambda src: os.mkfifo(src / "model.pt"),
        lambda src, out: _cli("export", "--model", str(src / "model.pt"), "--out-dir",
                              str(out / "exported")),
        "error: {src}/model.pt: a FIFO (named pipe), not a regular file: never opened"),
    "predict_model_dev_zero": (
        lambda src: (_images(src), os.symlink("/dev/zero", src / "zero.pt")),
        lambda src, out: _predict(src, out, model="zero.pt"),
        "error: {src}/zero.pt: a character device, not a regular file: never opened"),
    "predict_avif_apng_and_a_text_file": (
        lambda src: _images(src, ("b.avif", lambda p: Image.fromarray(class_image(2, 0)).save(
            p, format="AVIF")), ("c.apng", _apng), ("notes.txt", lambda p: p.write_text("x"))),
        _predicted,
        f"warning: skipped 1 file(s) under the given folders whose suffix is no image suffix "
        f"({SUFFIXES}): {{src}}/images/notes.txt | predicted 3 of 3 files into {{out}}/p.csv; "
        f"1 skipped (no image suffix) | a.png: a label; b.avif: a label; c.apng: a label"),
    "predict_fifo_in_a_folder": (
        lambda src: _images(src, ("pipe.png", os.mkfifo)), _predicted,
        "predicted 1 of 2 files into {out}/p.csv; 1 could not be read (see the error "
        "column) | a.png: a label; pipe.png: a FIFO (named pipe), not a regular file: never "
        "opened"),
    # 12. sweep ranges, split values, init's source, thin images, special weights files
    "sweep_minus_inf_bound": (
        _nothing, _sweep("train.lr=-inf:0.1"),
        "error: --param 'train.lr=-inf:0.1': the bounds must be finite numbers (Optuna "
        "samples between them), e.g. train.lr=0:1"),
    "sweep_nan_bound": (
        _nothing, _sweep("train.lr=log:1e-4:nan"),
        "error: --param 'train.lr=log:1e-4:nan': the bounds must be finite numbers (Optuna "
        "samples between them), e.g. train.lr=0:1"),
    "sweep_int_range_without_an_integer": (
        _nothing, _sweep("train.batch_size=int:16.2:16.8"),
        "error: --param 'train.batch_size=int:16.2:16.8': no whole number lies between 16.2 "
        "and 16.8; give an integer range, e.g. train.batch_size=int:16:17"),
    "csv_split_upper_case": (
        lambda src: _split_csv(src, ["train", "TRAIN", "test", "train", "Train", "test"]),
        _prepare_csv,
        "{src}/manifest.csv: column split has 'TRAIN', 'Train' (line(s) 3, 6); use train, "
        "val or test, in lower case (e.g. train for 'TRAIN', train for 'Train'), or leave the "
        "column empty in every row to let split.method divide the images"),
    "csv_split_synonym": (
        lambda src: _split_csv(src, ["train", "validation", "test", "train", "val", "test"]),
        _prepare_csv,
        "{src}/manifest.csv: column split has 'validation' (line(s) 3); use train, val or "
        "test, in lower case (e.g. val for 'validation'), or leave the column empty in every "
        "row to let split.method divide the images"),
    "csv_split_unknown_word": (
        lambda src: _split_csv(src, ["train", "holdout", "test", "train", "val", "test"]),
        _prepare_csv,
        "{src}/manifest.csv: column split has 'holdout' (line(s) 3); use train, val or test, "
        "in lower case, or leave the column empty in every row to let split.method divide "
        "the images"),
    "csv_split_empty_in_some_rows": (
        lambda src: _split_csv(src, ["train", "", "test", "train", "", "test"]),
        _prepare_csv,
        "{src}/manifest.csv: line(s) 3, 6 have an empty split while the others have one; "
        "give every row train, val or test, or leave the column empty in every row"),
    "csv_split_empty_in_every_row": (
        lambda src: _split_csv(src, [""] * 6), _prepare_csv,
        "6 rows, split column: ['']"),
    "init_own_data_folder": (
        _own_project, lambda src, out: _init(src, "{src}/data"),
        "error: {src}/data is the project's own data/ folder, where the stages write their "
        "outputs, not a source of images: give the folder of your class folders (or a CSV "
        "manifest of your images)"),
    "init_a_stage_output": (
        _own_project, lambda src, out: _init(src, "{src}/data/prepared/manifest.csv"),
        "error: {src}/data/prepared/manifest.csv is inside data/prepared/, which a stage of "
        "this pipeline writes, not a source of images: give the folder of your class "
        "folders (or a CSV manifest of your images)"),
    "init_the_project_folder": (
        _own_project, lambda src, out: _init(src, "{src}"),
        "error: {src} is a folder that holds the project's data/ folder (the stages' "
        "outputs), not a source of images: give the folder of your class folders (or a CSV "
        "manifest of your images)"),
    "init_a_users_folder_under_data": (
        _own_project, lambda src, out: _init(src, "{src}/data/raw"),
        "next: the same without --dry-run"),
    "near_copy_views_1_pixel_wide": (_save_thin((20, 1)), _thin, "1x20: finite views"),
    "near_copy_views_1_pixel_tall": (_save_thin((1, 20)), _thin, "20x1: finite views"),
    "near_copy_views_1_pixel": (_save_thin((1, 1)), _thin, "1x1: finite views"),
    "near_copy_views_2_pixels": (_save_thin((2, 2)), _thin, "2x2: finite views"),
    "embed_images_1_pixel_wide": (
        _thin_tree, _embed_thin, "9 of 9 images embedded, errors: []"),
    "model_weights_fifo": (
        *_weights_at(os.mkfifo),
        "model.weights = '{src}/w.pt' is no weights file: a FIFO (named pipe), not a "
        "regular file: never opened"),
    "model_weights_dev_zero": (
        *_weights_at(lambda p: os.symlink("/dev/zero", p)),
        "model.weights = '{src}/w.pt' is no weights file: a character device, not a regular "
        "file: never opened"),
    "model_weights_folder": (
        *_weights_at(lambda p: p.mkdir()),
        "model.weights = '{src}/w.pt' is no weights file: a folder, not a regular file: "
        "never opened"),
    "model_weights_dangling_link": (
        *_weights_at(lambda p: os.symlink("gone.pt", p)),
        "model.weights = '{src}/w.pt' is no weights file: dangling symbolic link (to "
        "'gone.pt', which does not exist)"),
}


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: content hash (regular files), link target or type."""
    found: dict[str, tuple] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            found[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault(case, tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo
    make, act, expected = CASES[case]
    make(src)
    before = _snapshot(src)
    try:
        outcome = act(src, out)
    except PipelineError as exc:
        outcome = str(exc)
    expected = expected.replace("{src}", str(src)).replace("{out}", str(out))
    assert matches(outcome, expected), f"\n got: {outcome}\nwant: {expected}"
    assert "\n" not in outcome  # one line
    assert _snapshot(src) == before, "a source file changed"


# ----------------------------------------------------------------------------- bounds


def _numeric(tp: Any) -> bool:
    """Whether an annotation holds numbers (int or float, in a union, list or mapping's
    values; not bool, not a dataclass of its own)."""
    if tp in (int, float):
        return True
    origin = get_origin(tp)
    if origin in (Union, types.UnionType, tuple):
        return any(_numeric(arm) for arm in get_args(tp) if arm is not Ellipsis)
    if origin is dict:
        return _numeric(get_args(tp)[1])
    return False


def _dataclasses(cls: type) -> list[type]:
    """``cls`` and the dataclasses nested in its fields (phases, fractions, the head...)."""
    found = [cls]
    for tp in get_type_hints(cls).values():
        for arm in (tp, *get_args(tp), *(a for t in get_args(tp) for a in get_args(t))):
            if isinstance(arm, type) and dataclasses.is_dataclass(arm) and arm not in found:
                found.extend(c for c in _dataclasses(arm) if c not in found)
    return found


def test_every_number_in_params_has_an_upper_bound():
    """No number passes the check and fails later (a seed NumPy cannot take) or runs for
    days (a billion bootstrap resamples): each numeric key's range has an upper end."""
    unbounded = []
    for section in SECTIONS:
        for cls in _dataclasses(section_class(section)):
            hints = get_type_hints(cls)
            for f in dataclasses.fields(cls):
                bounds = f.metadata.get("range", {})
                if _numeric(hints[f.name]) and bounds.get("le") is None \
                        and bounds.get("lt") is None:
                    unbounded.append(f"{cls.__name__}.{f.name}")
    assert unbounded == []


def test_bounds_keep_the_repo_params_valid():
    """The committed params.yaml (the demo) still loads: its numbers are all in range."""
    assert parse_sections(repo_params(), *SECTIONS)


# ----------------------------------------------------------------------------- exps width


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """A git + DVC project whose workspace changed 20 long-named params (a table of
    hundreds of columns at DVC's pager width) and has the headline metrics."""
    work = tmp_path_factory.mktemp("exps")
    train = {f"setting_number_{i:02d}": 0.001 * i for i in range(20)}
    (work / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "true", "params": ["train"], "metrics": [{"metrics.json": {"cache": False}}]}}}))
    (work / "metrics.json").write_text(json.dumps(
        {"accuracy": 0.91, "macro_f1": 0.9, "log_loss": 0.3, "ece": 0.02}))
    env = _env()
    for args in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                 ["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(args, cwd=work, env=env, check=True, capture_output=True)
    (work / "params.yaml").write_text(yaml.safe_dump({"train": {k: v + 1 for k, v in
                                                                train.items()}}))
    return work


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return {**env, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
            **extra}


@pytest.mark.parametrize("columns", ["piped", "50", "120"])
def test_exps_fits_the_terminal_without_no_pager(experiments, columns):
    """``python -m pipeline exps`` as typed, piped (80 columns) or with COLUMNS set (a
    narrow or wide terminal): no line wider than that, the rows and first metric shown."""
    width = 80 if columns == "piped" else int(columns)
    env = _env() if columns == "piped" else _env(COLUMNS=columns)
    before = _snapshot_files(experiments)
    done = subprocess.run([sys.executable, "-m", "pipeline", "exps"], cwd=experiments,
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(map(len, lines)) <= width, done.stdout
    assert "workspace" in done.stdout
    if width >= 80:
        assert "accuracy" in done.stdout
    assert _snapshot_files(experiments) == before


def _snapshot_files(work: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (work / "params.yaml", work / "dvc.yaml", work / "metrics.json")}


def test_predict_csv_guards_formula_like_paths_and_labels(tmp_path, monkeypatch):
    """predict's CSV is a list people open in a spreadsheet (issue 26 item 8): a class
    name or a file name that would run as a formula gets a leading ', a plain number
    stays as it is, and no source file changes."""
    classes = ('=HYPERLINK("http://evil.example","click")', "-1", "@SUM(A1:A2)")
    _model(tmp_path / "model.pt", classes)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("=cmd.png", "plain.png"):
        Image.fromarray(class_image(0, 0)).save(images / name)
    before = _snapshot(images)
    monkeypatch.chdir(images)  # the files given as typed: their path cells start with =
    _cli("predict", "=cmd.png", "plain.png", "--model", str(tmp_path / "model.pt"), "--out",
         str(tmp_path / "p.csv"), "--device", "cpu", "--top-k", "3")
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["'=cmd.png", "plain.png"]
    guarded = {"'" + classes[0], "-1", "'" + classes[2]}
    assert all({r[f"top{i}_label"] for i in (1, 2, 3)} == guarded for r in rows)
    assert all(r["pred"] == r["top1_label"] and r["error"] == "" for r in rows)
    assert _snapshot(images) == before
