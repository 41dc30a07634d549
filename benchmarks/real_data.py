"""The whole pipeline on every offline real data set, defaults only (issue 12).

    python benchmarks/real_data.py [--work /tmp/real_data] [--only NAME ...] [--folds K [--reuse]]
        [--set section.key=value ...] [--recipes] [--smoke]

Per data set it copies this working tree into WORK/NAME (a fresh git + DVC project),
changes only ``data.*`` in params.yaml, runs ``dvc repro`` and prints one table row:
test accuracy with its 95 % interval, each stage's wall time (metrics/all/run.json), the
resolved ``auto`` values (image sizes, the data profile, train phases and hflip), what
``clean`` found, the calibrated near-copy rule with its estimated recall, and the floor:
a logistic-regression probe on the embed stage's frozen features (fitted on the train
rows, scored on the same test rows).

With ``--recipes``, for each photo set given as ``train/`` + ``val/`` or ``test/`` folders,
it then trains the same project as a 224 px all-layers fine-tune (6 epochs, every group,
lr x 0.25; ``dvc repro evaluate``) and runs the tutorial recipe by hand
(benchmarks/tutorial_recipe.py), and prints a second table: each recipe's test accuracy
with its interval and time, and whether the defaults reach the all-layers model's
interval in at most half the tutorial's whole wall time (issue 30's bar).

With ``--folds K`` it then cross-validates both on each data set's train + val rows, for
sets whose test split is too small to rank them (lfw: 30 images): ``split.folds`` set to
K folds, ``dvc repro ensemble@folds`` (each fold model trains on the other folds, picks
its epoch on its own fold and scores it), and the same probe fitted on the other folds'
rows; both are pooled over every held-out row, with 95 % bootstrap intervals.

Data sets (none is copied into the repository; images are written under WORK):
- ``digits``: the embedded demo (scikit-learn's 8x8 digits, 1,797 images).
- ``hymenoptera``: ../shared/data/hymenoptera (ants/bees photos, ``train/`` + ``val/``:
  val/ becomes the test set).
- ``lfw``: scikit-image's bundled ``lfw_subset`` (200 grey 25x25 crops: 100 faces, 100
  not), a flat class-per-folder tree.
- ``ants-bees-<n>-s<seed>``: few-shot ants/bees, n = 10 or 25 train photos per class
  drawn by seed 0, 1 or 2 from its train/, with the whole val/ (153) as the test folder;
  val is carved from the few train photos, as a user's would be.
- ``fashion``: Debian's ``dataset-fashion-mnist`` (apt), 100 images per class of its
  train file and 50 per class of its t10k file, as ``train/`` + ``test/`` folders.

``--smoke``: one data set, ``tiny`` (3 classes of 12 generated 24-px images), with timm's
tiny test model (random weights), 32-px images and 1 + 1 epochs, ``dvc repro evaluate``
(export and report left out) in a temporary WORK: the table's path in about a minute.
``--folds`` is not part of it.

Time it alone on a quiet machine: every number is wall time on this machine's cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import TINY_PARAMS, add_smoke, apply_overrides, write_tree
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "boot"]
STAGES = ("prepare", "embed", "clean", "split", "cache", "train", "evaluate")
# dvc and the stages' `python` from this interpreter's environment, whatever PATH says
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1"}


def write_lfw(root: Path) -> Path:
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25): 100 faces first
    for i, img in enumerate(images):
        folder = root / ("face" if i < 100 else "not_face")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"lfw_{i:03d}.png")
    return root


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_fashion(root: Path, train_per_class: int = 100, test_per_class: int = 50) -> Path:
    if not FASHION.exists():
        raise SystemExit(f"{FASHION} not found: apt-get install dataset-fashion-mnist")
    for split, prefix, per_class in (("train", "train", train_per_class),
                                     ("test", "t10k", test_per_class)):
        images = _idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
        labels = _idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
        for c, name in enumerate(FASHION_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == c)[:per_class]:  # the files' own order
                Image.fromarray(images[i]).save(folder / f"{prefix}_{i:05d}.png")
    return root


def write_few_shot(root: Path, per_class: int, seed: int) -> Path:
    """ants/bees with ``per_class`` train photos per class, drawn by ``seed`` from its
    train/ (the unreadable .gif left out), and the whole val/ as the test folder."""
    rng = np.random.default_rng(seed)
    if root.exists():
        shutil.rmtree(root)
    for cls in ("ants", "bees"):
        photos = sorted(p for p in (HYMENOPTERA / "train" / cls).iterdir()
                        if p.suffix.lower() in (".jpg", ".jpeg"))
        for split, files in (("train", rng.choice(photos, per_class, replace=False)),
                             ("val", sorted((HYMENOPTERA / "val" / cls).iterdir()))):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, root / split / cls / f.name)
    return root


def few_shot_sets(work: Path) -> dict[str, dict]:
    """ants-bees-<n>-s<seed>: few-shot ants/bees, 10 and 25 train photos per class."""
    sets = {}
    for n in (10, 25):
        for seed in (0, 1, 2):
            root = work / "images" / f"ants-bees-{n}-s{seed}"
            sets[f"ants-bees-{n}-s{seed}"] = {
                "source": "folder", "root": str(root),
                "make": lambda r=root, n=n, s=seed: write_few_shot(r, n, s)}
    return sets


def datasets(work: Path) -> dict[str, dict]:
    """name -> the data.* settings (the only params the benchmark changes, with --set)."""
    return {
        "digits": {},
        "hymenoptera": {"source": "folder", "root": str(HYMENOPTERA)},
        **few_shot_sets(work),
        "lfw": {"source": "folder", "root": str(work / "images" / "lfw"),
                "make": lambda: write_lfw(work / "images" / "lfw")},
        "fashion": {"source": "folder", "root": str(work / "images" / "fashion"),
                    "make": lambda: write_fashion(work / "images" / "fashion")},
    }


def smoke_datasets(work: Path) -> dict[str, dict]:
    """``--smoke``'s one data set: 3 classes of 12 generated 24-px images."""
    root = work / "images" / "tiny"
    return {"tiny": {"source": "folder", "root": str(root),
                     "make": lambda: write_tree(root, per_class=12, size=24)}}


def make_project(dest: Path, data: dict, overrides: tuple[str, ...] = ()) -> None:
    """This working tree's tracked and unignored files, as a fresh git + DVC project, its
    params.yaml changed in ``data.*`` and by ``overrides`` (``section.key=value``)."""
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"].update({k: v for k, v in data.items() if k != "make"})
    apply_overrides(params, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "benchmark project"]):
        subprocess.run(git + cmd, cwd=dest, check=True)  # dvclive needs a commit


def linear_probe(project: Path) -> float:
    """Test accuracy of a logistic regression on the embed stage's frozen features,
    fitted on the train rows (what the pipeline's head sees)."""
    from sklearn.linear_model import LogisticRegression

    meta = json.loads((project / "data/embed/meta.json").read_text())
    feats = np.load(project / "data/embed/embeddings.npy")
    row = {image_id: i for i, image_id in enumerate(meta["ids"])}
    df = pd.read_csv(project / "data/split/manifest.csv", dtype=str)
    df = df[df["split"].isin(["train", "val", "test"])]
    x = feats[[row[i] for i in df["image_id"]]]
    fit, test = (df["split"] == "train").to_numpy(), (df["split"] == "test").to_numpy()
    probe = LogisticRegression(max_iter=5000).fit(x[fit], df["label"][fit])
    return float((probe.predict(x[test]) == df["label"][test]).mean())


def probe_folds(project: Path) -> np.ndarray:
    """(N,) 0/1: the probe right on each held-out row of the split manifest's folds,
    fitted on the other folds' rows, in manifest order (the fold stage's rows)."""
    from sklearn.linear_model import LogisticRegression

    meta = json.loads((project / "data/embed/meta.json").read_text())
    feats = np.load(project / "data/embed/embeddings.npy")
    row = {image_id: i for i, image_id in enumerate(meta["ids"])}
    df = pd.read_csv(project / "data/split/manifest.csv", dtype=str)
    df = df[df["fold"].notna() & (df["fold"] != "")]
    x, y, fold = feats[[row[i] for i in df["image_id"]]], df["label"].to_numpy(), \
        df["fold"].astype(float).astype(int).to_numpy()
    right = np.zeros(len(df))
    for k in np.unique(fold):
        probe = LogisticRegression(max_iter=5000).fit(x[fold != k], y[fold != k])
        right[fold == k] = probe.predict(x[fold == k]) == y[fold == k]
    return right


def cross_validate(name: str, work: Path, k: int) -> dict:
    """K-fold cross-validation of the pipeline's defaults and of the probe (see --folds)."""
    from pipeline.scoring.metrics import bootstrap_ci

    project = work / name
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["split"]["folds"] = list(range(k))
    params["ensemble"]["combine"] = ["folds"]
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", "ensemble@folds"], cwd=project,
                          capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    (work / f"{name}_folds.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stdout + proc.stderr)[-600:], "wall": wall}
    cv = json.loads((project / "metrics/ensemble/folds.json").read_text())
    right = probe_folds(project)
    ones = np.zeros(len(right), dtype=int)
    low, high = bootstrap_ci(ones, right, lambda _, v: float(v.mean()), n=1000, seed=0)
    return {"name": name, "wall": wall, "k": k, "rows": cv["oof_images"],
            "pipeline": (cv["oof_accuracy"], cv["oof_accuracy_ci_low"],
                         cv["oof_accuracy_ci_high"]),
            "per_fold": (cv["cv_accuracy_mean"], cv["cv_accuracy_std"]),
            "probe": (float(right.mean()), low, high)}


def markdown(header: list[str], rows: list[dict], cells: Callable[[dict], list[str]]) -> None:
    """A markdown table, one line per result; a failed run gets its error instead."""
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join([r["name"], *(
            [f"FAILED after {r['wall']:.0f} s: {r['error'][-200:]!r}"] if "error" in r
            else cells(r))]) + " |")


def print_folds(rows: list[dict]) -> None:
    def cells(r: dict) -> list[str]:
        (a, lo, hi), (m, sd), (pa, plo, phi) = r["pipeline"], r["per_fold"], r["probe"]
        return [str(r["k"]), str(r["rows"]), f"{a:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{m:.3f} +- {sd:.3f}", f"{pa:.3f} [{plo:.3f}, {phi:.3f}]", f"{r['wall']:.0f}"]
    print()
    markdown(["data set", "folds", "held-out rows", "pipeline, pooled [95 % CI]",
              "per fold mean +- sd", "probe, pooled [95 % CI]", "s"], rows, cells)


def run_one(name: str, data: dict, work: Path, *, smoke: bool = False,
            overrides: tuple[str, ...] = ()) -> dict:
    """``dvc repro`` on data set ``name`` in a fresh project (``smoke``: tiny settings,
    up to evaluate; ``overrides``: ``section.key=value`` changes to params.yaml); its
    table row."""
    if "make" in data:
        data["make"]()
    project = work / name
    make_project(project, data, TINY_PARAMS if smoke else overrides)
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro", *(["evaluate"] if smoke else [])], cwd=project,
                          capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - start
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"name": name, "error": (proc.stdout + proc.stderr)[-600:], "wall": wall}
    read = lambda rel: json.loads((project / rel).read_text())  # noqa: E731
    ev, clean, run = (read(f"metrics/all/{n}.json") for n in ("eval", "clean", "run"))
    cache = read("data/cache/meta.json")
    auto = [line for line in proc.stdout.splitlines()
            if re.match(r"train\.(phases|hflip) auto", line)]
    return {"name": name, "wall": wall, "test_images": ev["test_images"],
            "accuracy": ev["accuracy"], "ci": (ev["accuracy_ci_low"], ev["accuracy_ci_high"]),
            "macro_f1": ev["macro_f1"], "probe": linear_probe(project),
            "seconds": {s: run.get(f"{s}_seconds") for s in STAGES},
            "embed_size": clean.get("embed_image_size"), "cache_size": cache["image_size"],
            "profile": cache.get("profile"), "auto": auto,
            "clean": {k: clean[k] for k in ("images", "kept", "unreadable", "exact_duplicate",
                                            "near_duplicate", "label_issue", "outlier")},
            "rule": {k.removeprefix("near_duplicate_"): v for k, v in clean.items()
                     if k.startswith("near_duplicate_")}}


ALL_LAYERS_224 = ("cache.image_size=224",
                  "train.phases=[{epochs: 6, unfreeze: all, lr_mult: 0.25}]")


def set_params(project: Path, overrides: tuple[str, ...]) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    apply_overrides(params, overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def compare_recipes(row: dict, data: dict, work: Path) -> dict:
    """--recipes: on the project ``run_one`` left, the 224 px all-layers fine-tune
    (:data:`ALL_LAYERS_224`, ``dvc repro evaluate``), then the tutorial recipe by hand on
    the data's own train/ and test folders (benchmarks/tutorial_recipe.py), in this
    process, which never calls ``run_stage`` and so keeps glibc's malloc settings, as a
    user's tutorial script would (pipeline/core/heap.py)."""
    from tutorial_recipe import run as tutorial

    project, root = work / row["name"], Path(data["root"])
    set_params(project, ALL_LAYERS_224)
    proc = subprocess.run(["dvc", "repro", "evaluate"], cwd=project, capture_output=True,
                          text=True, env=ENV)
    (work / f"{row['name']}.all224.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {**row, "error": (proc.stdout + proc.stderr)[-600:]}
    ev = json.loads((project / "metrics/all/eval.json").read_text())
    run = json.loads((project / "metrics/all/run.json").read_text())
    test_dir = next(d for d in ("val", "test") if (root / d).is_dir())
    return {**row, "all224": {"accuracy": ev["accuracy"], "ci": (ev["accuracy_ci_low"],
                                                                 ev["accuracy_ci_high"]),
                              "train": run["train_seconds"]},
            "tutorial": tutorial(root, test_dir=test_dir)}


def print_recipes(rows: list[dict]) -> None:
    def acc(r: dict) -> str:
        return f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"

    def cells(r: dict) -> list[str]:
        a, t, train = r["all224"], r["tutorial"], r["seconds"]["train"]
        return [acc(r), f"{train:.0f}", acc(a), f"{a['train']:.0f}", acc(t),
                f"{t['seconds']:.0f}",
                "yes" if r["accuracy"] >= a["ci"][0] and train <= t["seconds"] / 2 else "no"]
    markdown(["data set", "defaults: test accuracy [95 % CI]", "train s",
              "224 px all layers, 6 epochs", "train s", "tutorial recipe", "whole s",
              "defaults >= all-layers interval, train <= tutorial / 2"],
             [r for r in rows if "all224" in r], cells)


def print_table(rows: list[dict]) -> None:
    def cells(r: dict) -> list[str]:
        secs = "/".join(f"{r['seconds'][s]:.0f}" if r["seconds"][s] is not None else "-"
                        for s in STAGES)
        return [str(r["test_images"]), f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, "
                f"{r['ci'][1]:.3f}]", f"{r['probe']:.3f}", str(r["profile"]),
                f"{r['embed_size']} / {r['cache_size']}", secs, f"{r['wall']:.0f}"]
    markdown(["data set", "test images", "test accuracy [95 % CI]", "linear probe", "profile",
              "embed / cache px", "prepare/embed/clean/split/cache/train/evaluate s",
              "total s"], rows, cells)
    for r in rows:
        if "error" not in r:
            print(f"\n{r['name']}: clean {r['clean']}\n  near-copy rule {r['rule']}\n  "
                  + "\n  ".join(r["auto"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/real_data"))
    parser.add_argument("--only", nargs="*", help="data set names (default: all)")
    parser.add_argument("--folds", type=int, default=0,
                        help="then K-fold cross-validate pipeline and probe (0: skip)")
    parser.add_argument("--reuse", action="store_true",
                        help="--folds only: reuse WORK/NAME from an earlier run")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="change params.yaml beyond data.* (a recipe to compare)")
    parser.add_argument("--recipes", action="store_true",
                        help="photo sets in train/ + val|test folders: also the 224 px "
                             "all-layers fine-tune and the tutorial recipe")
    add_smoke(parser)
    args = parser.parse_args()
    if not args.smoke:
        compare(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.work, args.only, args.folds, args.reuse = Path(tmp), None, 0, False
        args.recipes = False
        compare(args)


def compare(args: argparse.Namespace) -> None:
    """Run every data set asked for; print the tables; exit 1 if one failed."""
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    folds: list[dict] = []
    sets = smoke_datasets if args.smoke else datasets
    for name, data in sets(args.work.resolve()).items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        if not (args.reuse and (args.work / name / "dvc.lock").exists()):
            rows.append(run_one(name, data, args.work.resolve(), smoke=args.smoke,
                                overrides=tuple(args.set)))
            if args.recipes and "error" not in rows[-1]:
                rows[-1] = compare_recipes(rows[-1], data, args.work.resolve())
            (args.work / "results.json").write_text(json.dumps(rows, indent=1))
        if args.folds:
            folds.append(cross_validate(name, args.work.resolve(), args.folds))
            (args.work / "folds.json").write_text(json.dumps(folds, indent=1))
    if rows:
        print_table(rows)
    if args.recipes:
        print_recipes(rows)
    if folds:
        print_folds(folds)
    failed = [r for r in rows + folds if "error" in r]
    for r in failed:
        print(f"{r['name']} failed; the end of its log:\n{r['error']}", file=sys.stderr)
    if failed:  # after every table: the other data sets' rows still count
        sys.exit(f"failed: {', '.join(r['name'] for r in failed)} (logs in {args.work})")


if __name__ == "__main__":
    main()
