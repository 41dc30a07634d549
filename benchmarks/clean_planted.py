"""Benchmark: plant known defects into real photos, run prepare -> embed -> clean, score.

    python benchmarks/clean_planted.py [--source hymenoptera|fashion-mnist|digits|textures]
        [--set clean.near_duplicate_threshold=0.9 ...] [--workdir DIR] [--smoke]

Builds a class-per-folder tree in a temporary folder (the source images are only read),
plants defects whose truth it records, runs the real stage functions in-process
(``prepare.run``, ``embed.run``, ``clean.run``) with params.yaml plus ``--set`` overrides,
and prints precision and recall per issue type against the planted truth.

Sources:
- ``hymenoptera``: the ants/bees JPEGs of PyTorch's transfer-learning tutorial
  (``--root``, default ``../shared/data/hymenoptera``; its .gif placeholder is left out);
- ``fashion-mnist``: ``--per-class`` test images of ``--classes`` from the Debian package
  ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), 28 px grey;
- ``digits``: scikit-learn's 1,797 8x8 digits (the demo's images);
- ``textures``: ``--per-class`` noisy synthetic 48-px textures of 4 classes, made here.
Every setting is params.yaml's (``auto`` sizes and near-copy rule, as a new user runs
it), with ``--set`` overrides; the max_rate gates are switched off so that the stage
writes its outputs whatever it finds. ``--smoke``: 3
classes of 14 generated 64-px images, a few of each plant, timm's tiny test model with
random weights at 32 px: every step in seconds.

Planted (disjoint sets of originals, drawn with ``--seed``):
- exact copies: byte copies under other names and lossless PNG re-saves (other bytes,
  the same pixels); truth: every member of a group but the one clean keeps (the smallest
  image_id) is an ``exact_duplicate``;
- near copies, one per original: resized 10-25 % smaller, JPEG quality 50-80,
  brightness +-5-10 %, 1 px to 3 % of the short side off each side, or
  ``combined`` the way people make copies (issue 28): 3-7 % of the short side (at least
  a pixel; 1-2 px of a 28-px image) off each side, rescaled x 0.8-0.9 or x 1.1-1.25,
  brightness +-5-10 %, then JPEG
  quality 50-80; truth: the original and its
  copies form one family, and a pair of a family that is not pixel-identical is a near
  pair; a predicted pair is two rows in one ``cluster_id`` that are not pixel-identical;
- conflicting labels: an exact or a near copy filed under another class; truth: both
  rows are ``conflicting_labels``;
- label flips: ``--flip-rate`` of the originals moved to another class; truth:
  ``label_issue`` (rows of the conflicting families are left out of this score: their
  wrong label is the other detector's finding);
- broken files: truncated JPEG, zero bytes, text named .jpg, JPEG magic then garbage,
  SVG and PDF (formats Pillow cannot read), a PNG whose header claims 60000 x 60000
  pixels (decompression bomb); truth: ``unreadable``.

The label probe line names the probe the clean stage chose (``clean.label_probe``) and
each candidate's out-of-fold accuracy on the given labels (metrics/all/clean.json); the
linear probe line is the linear probe's cross-validated accuracy on the originals with
their true labels.
"""

from __future__ import annotations

import argparse
import atexit
import gzip
import io
import itertools
import json
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from common import add_smoke, load_params, probe_accuracy, smoke_params, tiny_images
from PIL import Image, ImageEnhance

from pipeline.core.config import parse_sections
from pipeline.dataquality import cleaning
from pipeline.modality.image.decoding import UnreadableImage, decode_image, pixel_hash
from pipeline.stages import clean, embed, prepare

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "boot")
NEAR_KINDS = ("resize", "jpeg", "brightness", "crop", "combined")


@dataclass
class Planted:
    """What the benchmark put at one path of the tree, and the truth about it."""

    path: str  # relative to the tree's root
    kind: str  # original, exact_copy, png_copy, near_<how>, conflict_exact, ..., broken_<how>
    true_label: str
    family: str = ""  # the original's path for copies and for the original itself
    pixels: str = ""  # the decoded pixels' hash ("" for broken files)


def hymenoptera_originals(root: Path) -> list[tuple[str, str, Image.Image]]:
    """(name, label, image) for every JPEG of the ants/bees tree (train and val pooled)."""
    out: list[tuple[str, str, Image.Image]] = []
    for file in sorted(root.glob("*/*/*")):
        if file.suffix.lower() in (".jpg", ".jpeg"):
            split, label = file.parts[-3], file.parts[-2]
            name = f"{split}_{file.stem.replace(' ', '_')}.jpg"
            out.append((name, label, Image.open(file)))
    if not out:
        raise SystemExit(f"no JPEGs under {root}/<split>/<class>/")
    return out


def fashion_originals(classes: list[str], per_class: int, seed: int
                      ) -> list[tuple[str, str, Image.Image]]:
    """(name, label, image) for ``per_class`` Fashion-MNIST test images of each class."""
    if not FASHION.is_dir():
        raise SystemExit(f"{FASHION} not found: apt-get install dataset-fashion-mnist")
    images = np.frombuffer(gzip.open(FASHION / "t10k-images-idx3-ubyte.gz").read(), np.uint8,
                           offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz").read(), np.uint8,
                           offset=8)
    rng = np.random.default_rng(seed)
    out = []
    for name in classes:
        rows = np.flatnonzero(labels == FASHION_NAMES.index(name))
        for i in sorted(rng.choice(rows, size=per_class, replace=False)):
            out.append((f"fm{i:05d}.png", name, Image.fromarray(images[i]).convert("RGB")))
    return out


def digits_originals(scratch: Path) -> list[tuple[str, str, Image.Image]]:
    """(name, label, image) for scikit-learn's 1,797 8x8 digits: the demo stage's own PNG
    files (``write_digits`` into ``scratch``), copied byte for byte into the tree."""
    from pipeline.modality.image.demo import write_digits

    atexit.register(shutil.rmtree, scratch, True)  # read until the tree is built
    return [(Path(r["path"]).name, r["label"], Image.open(scratch / r["path"]))
            for r in write_digits(scratch)]


def texture_originals(per_class: int, seed: int, *, classes: int = 4, size: int = 48
                      ) -> list[tuple[str, str, Image.Image]]:
    """(name, label, image) for ``classes`` classes of ``per_class`` noisy synthetic
    ``size``-px textures: a grating whose orientation is the class (+-9 degrees), at a
    random frequency and phase, over smooth random blobs, with per-pixel noise (sd 20
    grey levels) and a random tint: distinct images alike at a glance, as scans and
    microscope tiles are."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for k in range(classes):
        for j in range(per_class):
            theta = k * np.pi / classes + rng.normal(0, 0.15)
            grating = np.sin(2 * np.pi * rng.uniform(3, 6) * (xx * np.cos(theta) + yy
                                                             * np.sin(theta))
                             + rng.uniform(0, 2 * np.pi))
            blobs = gaussian_filter(rng.normal(size=(size, size)), 3)
            grey = 128 + 50 * grating + 25 * blobs / blobs.std() + rng.normal(0, 20, (size,
                                                                                    size))
            rgb = grey[..., None] * rng.uniform(0.8, 1.2, 3)
            out.append((f"t{k}{j:04d}.png", f"texture{k}",
                        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))))
    return out


def smoke_originals() -> list[tuple[str, str, Image.Image]]:
    """(name, label, image) for 3 classes of 14 generated 64-px images (``--smoke``)."""
    images, labels = tiny_images(classes=3, per_class=14, size=64)
    return [(f"s{i:03d}.png", f"c{label}", Image.fromarray(img))
            for i, (img, label) in enumerate(zip(images, labels))]


def _hash(path: Path) -> str:
    return pixel_hash(decode_image(path, max_pixels=1 << 30))


def _near_copy(img: Image.Image, how: str, rng: np.random.Generator) -> tuple[Image.Image, int]:
    """A near copy of ``img`` and the JPEG quality to save it with (0: PNG)."""
    img = img.convert("RGB")
    w, h = img.size
    if how == "resize":
        scale = rng.uniform(0.75, 0.90)
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                          Image.Resampling.BICUBIC), 95
    if how == "jpeg":
        return img, int(rng.integers(50, 81))
    if how == "brightness":
        factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.10)
        return ImageEnhance.Brightness(img).enhance(factor), 0
    if how == "crop":
        most = max(1, round(min(w, h) * 0.03))  # 1 px to 3 % of the short side
        left, top, right, bottom = (int(c) for c in rng.integers(1, most + 1, size=4))
        return img.crop((left, top, w - right, h - bottom)), 95
    if how == "combined":
        low, high = (max(1, round(min(w, h) * f)) for f in (0.03, 0.07))  # a few percent
        left, top, right, bottom = (int(c) for c in rng.integers(low, high + 1, size=4))
        img = img.crop((left, top, w - right, h - bottom))
        scale = rng.uniform(0.8, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.25)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
        factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.10)
        return ImageEnhance.Brightness(img).enhance(factor), int(rng.integers(50, 81))
    raise ValueError(how)


def _save(img: Image.Image, path: Path, quality: int) -> None:
    if quality:
        img.convert("RGB").save(path, format="JPEG", quality=quality)
    else:
        img.save(path, format="PNG")


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def build_tree(originals: list[tuple[str, str, Image.Image]], root: Path, *, seed: int,
               exact: int, near_per_kind: int, conflicts: int, flip_rate: float
               ) -> list[Planted]:
    """Write originals and planted defects under ``root/<label>/``; return the truth."""
    rng = np.random.default_rng(seed)
    labels = sorted({label for _, label, _ in originals})
    order = rng.permutation(len(originals))
    n_flips = round(flip_rate * len(originals))
    sizes = [exact, near_per_kind * len(NEAR_KINDS), conflicts, n_flips]
    if sum(sizes) > len(originals):
        raise SystemExit(f"{len(originals)} originals are too few for {sum(sizes)} plants")
    cuts = np.cumsum([0, *sizes])
    exact_ids, near_ids, conflict_ids, flip_ids = (
        order[a:b] for a, b in itertools.pairwise(cuts))
    flips = set(flip_ids.tolist())
    truth: list[Planted] = []
    written: dict[int, Path] = {}

    def other(label: str) -> str:
        choices = [x for x in labels if x != label]
        return str(choices[int(rng.integers(len(choices)))])

    for i, (name, label, img) in enumerate(originals):
        folder = other(label) if i in flips else label
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        src = getattr(img, "filename", "")
        if src:
            shutil.copyfile(src, path)  # the original's very bytes
        else:
            img.save(path)
        written[i] = path
        truth.append(Planted(f"{folder}/{name}", "flip" if i in flips else "original", label,
                             pixels=_hash(path)))
    by_path = {t.path: t for t in truth}

    def add(i: int, suffix: str, kind: str, make) -> None:
        name, label, img = originals[i]
        src = written[i]
        family = src.relative_to(root).as_posix()
        folder = other(label) if kind.startswith("conflict") else label
        dest = root / folder / f"{Path(name).stem}_{suffix}"
        make(src, dest)
        by_path[family].family = family
        truth.append(Planted(dest.relative_to(root).as_posix(), kind, label, family,
                             _hash(dest)))

    def png_copy(src: Path, dest: Path) -> None:
        Image.open(src).save(dest, format="PNG")  # same pixels, other bytes

    def near(how: str):
        def make(src: Path, dest: Path) -> None:
            copy, quality = _near_copy(Image.open(src), how, rng)
            _save(copy, dest, quality)
        return make

    for j, i in enumerate(exact_ids):
        if j % 3 in (0, 2):
            add(i, "copy" + Path(originals[i][0]).suffix, "exact_copy", shutil.copyfile)
        if j % 3 in (1, 2):
            add(i, "resaved.png", "png_copy", png_copy)
    for j, i in enumerate(near_ids):
        how = NEAR_KINDS[j % len(NEAR_KINDS)]
        add(i, f"{how}.{'png' if how == 'brightness' else 'jpg'}", f"near_{how}", near(how))
    for j, i in enumerate(conflict_ids):
        if j % 2:
            add(i, "filed_elsewhere" + Path(originals[i][0]).suffix, "conflict_exact",
                shutil.copyfile)
        else:
            add(i, "filed_elsewhere.jpg", "conflict_near", near("jpeg"))

    some_jpeg = written[int(order[-1])].read_bytes()
    broken = {
        "truncated.jpg": some_jpeg[: len(some_jpeg) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is a text file, not a photo\n",
        "garbage.jpg": b"\xff\xd8\xff\xe0" + rng.bytes(4000),
        "vector.svg": (b"<svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'>"
                       b"<circle cx='32' cy='32' r='20' fill='red'/></svg>\n"),
        "bomb.png": _bomb_png(60000, 60000),
    }
    pdf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(pdf, format="PDF")
    broken["document.pdf"] = pdf.getvalue()
    for k, (name, data) in enumerate(broken.items()):
        label = labels[k % len(labels)]
        (root / label / f"broken_{name}").write_bytes(data)
        truth.append(Planted(f"{label}/broken_{name}", "broken_" + name.split(".")[0], label))
    return truth


def _pairs(groups: Iterable[list[str]]) -> set[tuple[str, str]]:
    return {(a, b) for g in groups for a, b in itertools.combinations(sorted(g), 2)}


def _pr(found: set, truth: set) -> str:
    hit = len(found & truth)
    p = hit / len(found) if found else float("nan")
    r = hit / len(truth) if truth else float("nan")
    return f"precision {p:.3f} ({hit}/{len(found)}), recall {r:.3f} ({hit}/{len(truth)})"


def score(out: pd.DataFrame, truth: list[Planted], counts: dict) -> dict[str, str]:
    """Precision and recall per issue type of clean's manifest against the planted truth;
    beside each near-copy kind's recall, clean's estimate (``counts``: its clean.json)."""
    out = out.set_index("path")
    planted = {t.path: t for t in truth}
    flagged = {name: {p for p, s in out["issues"].items() if name in s.split(";")}
               for name in cleaning.ISSUE_ORDER}
    lines = {}
    broken = {t.path for t in truth if t.kind.startswith("broken")}
    lines["unreadable"] = _pr(flagged["unreadable"], broken)

    pixel_groups: dict[str, list[str]] = {}
    for t in truth:
        if t.pixels:
            pixel_groups.setdefault(t.pixels, []).append(t.path)
    exact_truth = {p for g in pixel_groups.values() if len(g) > 1
                   for p in g if p != min(g, key=lambda q: out.loc[q, "image_id"])}
    lines["exact_duplicate"] = _pr(flagged["exact_duplicate"], exact_truth)

    families: dict[str, list[str]] = {}
    for t in truth:
        if t.family:
            families.setdefault(t.family, []).append(t.path)
    same_pixels = _pairs(g for g in pixel_groups.values() if len(g) > 1)
    near_truth = _pairs(families.values()) - same_pixels
    clusters: dict[str, list[str]] = {}
    for p, c in out["cluster_id"].items():
        if c:
            clusters.setdefault(c, []).append(p)
    near_found = _pairs(clusters.values()) - same_pixels
    lines["near_duplicate (pairs)"] = _pr(near_found, near_truth)
    for how in NEAR_KINDS:
        kind_truth = {(min(t.family, t.path), max(t.family, t.path)) for t in truth
                      if t.kind == f"near_{how}"}
        estimate = counts.get(f"near_duplicate_estimated_recall_{how}")
        lines[f"  near {how} (copy with its original)"] = _pr(
            near_found & kind_truth, kind_truth).split(", ")[1] + (
            f", estimated recall {estimate:.3f}" if estimate is not None else "")

    conflicted = {f for f, g in families.items()
                  if any(planted[p].kind.startswith("conflict") for p in g)}
    conflict_truth = {p for f in conflicted for p in families[f]}
    lines["conflicting_labels"] = _pr(flagged["conflicting_labels"], conflict_truth)

    flips = {t.path for t in truth if t.kind == "flip"}
    lines["label_issue (flips)"] = _pr(flagged["label_issue"] - conflict_truth, flips)
    lines["outlier (none planted)"] = f"{len(flagged['outlier'])} flagged"
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("hymenoptera", "fashion-mnist", "digits",
                                             "textures"),
                        default="hymenoptera")
    parser.add_argument("--root", type=Path, default=HYMENOPTERA)
    parser.add_argument("--classes", default="trouser,sandal,bag,tshirt",
                        help="fashion-mnist classes (comma-separated)")
    parser.add_argument("--per-class", type=int, default=250, help="fashion-mnist, textures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact", type=int, default=12, help="originals given exact copies")
    parser.add_argument("--near-per-kind", type=int, default=10)
    parser.add_argument("--conflicts", type=int, default=10)
    parser.add_argument("--flip-rate", type=float, default=0.05)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, as dvc exp run -S (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the tree and outputs here")
    add_smoke(parser)
    args = parser.parse_args()

    if args.smoke:
        originals = smoke_originals()
        args.exact, args.near_per_kind, args.conflicts, args.flip_rate = 2, 1, 2, 0.1
    elif args.source == "hymenoptera":
        originals = hymenoptera_originals(args.root)
    elif args.source == "digits":
        originals = digits_originals(Path(tempfile.mkdtemp(prefix="digits_")))
    elif args.source == "textures":
        originals = texture_originals(args.per_class, args.seed)
    else:
        originals = fashion_originals(args.classes.split(","), args.per_class, args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clean_planted_"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"--workdir {work} is not empty")
    root = work / "images"
    overrides = ["data.source=folder", f"data.root={root}", *args.set,
                 *[f"clean.max_rate.{k}=1.0" for k in cleaning.ISSUE_ORDER]]
    data, embed_cfg, clean_cfg = parse_sections(
        (smoke_params if args.smoke else load_params)(overrides), "data", "embed", "clean")
    try:
        truth = build_tree(originals, root, seed=args.seed, exact=args.exact,
                           near_per_kind=args.near_per_kind, conflicts=args.conflicts,
                           flip_rate=args.flip_rate)
        kinds = pd.Series([t.kind for t in truth]).value_counts().sort_index()
        print(f"{'smoke' if args.smoke else args.source}: {len(originals)} originals, "
              f"{len(truth)} files planted in {root}: "
              + ", ".join(f"{k} {v}" for k, v in kinds.items()))
        seconds = {}
        start = time.perf_counter()
        prepare.run(data, work / "prepared.csv")
        seconds["prepare"] = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = embed.run(data, embed_cfg, work / "prepared.csv", work / "embed")
        seconds["embed"] = time.perf_counter() - start
        start = time.perf_counter()
        out = clean.run(data, clean_cfg, work / "prepared.csv", work / "embed",
                        work / "clean.csv", work / "clean.json",
                        decisions=work / "no_decisions.csv", review_out=work / "review.csv",
                        review_html=work / "review.html")
        seconds["clean"] = time.perf_counter() - start

        rows = out.reset_index(drop=True).set_index("path")
        plain = [t for t in truth if t.kind in ("original", "flip")]
        x = embeddings[[rows.index.get_loc(t.path) for t in plain]]
        probe = clean_cfg.probes_for(len(out), ())[0]  # the clean stage's linear probe
        accuracy = probe_accuracy(x, [t.true_label for t in plain],
                                  folds=clean_cfg.label_folds, seed=0,
                                  probe=probe, dims=clean_cfg.probe_dims)
        found = json.loads((work / "all" / "clean.json").read_text())
        tried = ", ".join(f"{k.removeprefix('label_probe_accuracy_')} {v:.3f}"
                          for k, v in found.items() if k.startswith("label_probe_accuracy_"))
        print(f"\nparams: embed.image_size={embed_cfg.image_size}, "
              f"clean.near_duplicate_threshold={clean_cfg.near_duplicate_threshold}, "
              f"clean.label_method={clean_cfg.label_method}, "
              f"clean.label_probe={clean_cfg.label_probe}, "
              f"clean.label_folds={clean_cfg.label_folds} (max_rate gates off)")
        print(f"label probe: {found.get('label_probe', 'none')} (accuracy on the given "
              f"labels: {tried})")
        print(f"linear probe ({probe}) on the originals' embeddings, true "
              f"labels, {clean_cfg.label_folds}-fold: accuracy {accuracy:.4f}")
        print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        for name, line in score(out, truth, found).items():
            print(f"{name:38s} {line}")
        _similarities(embeddings, rows, truth)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _similarities(embeddings: np.ndarray, rows: pd.DataFrame, truth: list[Planted]) -> None:
    """Cosine similarity of each near-copy kind to its original, and between originals."""
    index = {p: rows.index.get_loc(p) for p in rows.index}
    print("cosine similarity to the original (min / median):")
    for kind in [*(f"near_{h}" for h in NEAR_KINDS), "conflict_near"]:
        sims = [float(embeddings[index[t.path]] @ embeddings[index[t.family]])
                for t in truth if t.kind == kind]
        if sims:
            print(f"  {kind:16s} {min(sims):.4f} / {float(np.median(sims)):.4f}")
    plain = [index[t.path] for t in truth if t.kind in ("original", "flip")]
    pairs = embeddings[plain] @ embeddings[plain].T
    np.fill_diagonal(pairs, -1)
    print(f"  distinct originals, highest pair: {pairs.max():.4f}")


if __name__ == "__main__":
    try:
        main()
    except UnreadableImage as exc:  # a source image itself is broken
        sys.exit(f"error: {exc}")
