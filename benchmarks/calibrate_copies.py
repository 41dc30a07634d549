"""Benchmark: plant near copies into real images, calibrate on the data, score the detector.

    python benchmarks/calibrate_copies.py [--sets photos,digits,textures,lfw,fashion]
        [--per-kind 6]
        [--sample 100] [--max-false-rate 0.002] [--seed 0] [--smoke]

For each data set it plants ``--per-kind`` near copies of each kind of
:data:`pipeline.modality.image.signals.COPY_KINDS` (JPEG 50-80, 10-25 % smaller, a few
pixels cropped,
brightness +-5-10 %, all combined; distinct originals, seed ``--seed + 1``), then does
what the stages would do, blind to what was planted: embeds every image with the
project's embed code path (``create_model`` + ``fit_image`` + ``to_input``, at the
``auto`` size), makes synthetic copies of a ``--sample`` of the images (seed ``--seed``),
calibrates each combination of signals (embedding, 16-px thumbnails, perceptual hash,
aligned views, copy model) and finds near-copy clusters with it. Prints, per data set and signal
combination, the thresholds, the estimated recall and false-match rate, the measured
recall (per kind) and precision on the planted pairs, and what the split stage's audit
finds when the planted copies are a test folder and every original is in train.

Data sets: ``photos`` = the ants/bees JPEGs (``--hymenoptera``, train and val pooled, the
.gif placeholder left out); ``digits`` = scikit-learn's 1,797 8x8 handwritten digits;
``textures`` = 800 synthetic 96-px textures (filtered noise and gratings, seeded);
``lfw`` = scikit-image's 200 25-px faces; ``fashion`` = 2,000 Fashion-MNIST images.

``--smoke``: 40 textures of 48 px, one copy per kind, timm's tiny test model with random
weights, in seconds.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from common import TINY_MODEL, add_smoke
from PIL import Image

from pipeline.contracts.embedfiles import SIGNALS
from pipeline.dataquality.calibrate import (
    calibrate,
    copy_pairs,
    copy_similarities,
    distinct_similarities,
    near_copy_clusters,
)
from pipeline.finetuning.autosize import backbone_input_size, resolve_image_size
from pipeline.finetuning.backbones import create_model, resolve_arch
from pipeline.modality.image.decoding import fit_image, pixel_hash
from pipeline.modality.image.inputs import to_input
from pipeline.modality.image.signals import (
    COPY_KINDS,
    CopyModel,
    aligned_views,
    make_copies,
    phash,
    thumbnails,
    tiny_pixels,
)
from pipeline.params.model import ModelConfig

REPO = Path(__file__).resolve().parents[1]
# the share estimate of pipeline.dataquality.calibrate.calibrate before 2026-12 (for
# --estimator old):
# from settings that find a quarter of the copies, half a Poisson deviation, per subset
OLD = {"floor_recall": 0.25, "allowance": 0.5, "shared_share": False}
HYMENOPTERA = REPO.parent / "shared" / "data" / "hymenoptera"


def photos(root: Path) -> list[np.ndarray]:
    """Every ants/bees JPEG as (H, W, 3) uint8."""
    files = sorted(f for f in root.glob("*/*/*") if f.suffix.lower() in (".jpg", ".jpeg"))
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def digits() -> list[np.ndarray]:
    """scikit-learn's 8x8 digits as (8, 8, 3) uint8 (as the demo stage writes them)."""
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    return [np.repeat(p[:, :, None], 3, axis=2) for p in pixels]


def lfw() -> list[np.ndarray]:
    """scikit-image's lfw_subset (200 grey 25x25 crops; in the dev extras) as RGB uint8."""
    from skimage.data import lfw_subset

    faces = np.round(lfw_subset() * 255).astype(np.uint8)
    return [np.repeat(f[:, :, None], 3, axis=2) for f in faces]


def fashion(n: int = 2000) -> list[np.ndarray]:
    """The first ``n`` Fashion-MNIST training images (28x28; Debian's
    dataset-fashion-mnist) as RGB uint8."""
    import gzip

    path = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if not path.is_file():
        raise SystemExit(f"{path} not found: apt-get install dataset-fashion-mnist")
    raw = np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=16)
    return [np.repeat(x[:, :, None], 3, axis=2) for x in raw.reshape(-1, 28, 28)[:n]]


def textures(n: int = 800, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Synthetic textures: Gaussian-filtered colour noise at random scales plus gratings."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    for i in range(n):
        noise = gaussian_filter(rng.normal(size=(size, size, 3)), (rng.uniform(1, 4),) * 2
                                + (0,))
        noise /= noise.std() + 1e-9
        if i % 2:
            angle, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.3)
            grating = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy)
                             + rng.uniform(0, 2 * np.pi))
            noise = 0.5 * noise + grating[:, :, None] * rng.uniform(0.5, 1.5, size=3)
        tint = rng.uniform(60, 200, size=3)
        out.append(np.clip(tint + 30 * noise, 0, 255).astype(np.uint8))
    return out


def embed(images: list[np.ndarray], model: torch.nn.Module, prep, size: int,
          batch: int = 64) -> np.ndarray:
    """(N, D) L2-normalised pooled features, as the embed stage computes them."""
    feats = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            x = np.stack([fit_image(p, size, fit="crop") for p in images[start:start + batch]])
            x = to_input(torch.from_numpy(x), prep, torch.device("cpu"))
            feats.append(torch.nn.functional.normalize(model(x).float(), dim=1).numpy())
    return np.concatenate(feats)


def found_pairs(clusters: np.ndarray, hashes: list[str | None]) -> set[tuple[int, int]]:
    """Every (a, b), a < b, of images in one near-copy cluster, pixel-identical pairs (the
    exact duplicates) left out."""
    members: dict[str, list[int]] = {}
    for i, c in enumerate(clusters):
        if c is not None:
            members.setdefault(c, []).append(i)
    return {(a, b) for g in members.values() for a, b in itertools.combinations(g, 2)
            if hashes[a] != hashes[b]}


def run_set(name: str, originals: list[np.ndarray], model, prep, backbone: int,
            args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed + 1)
    n = len(originals)
    chosen = rng.choice(n, size=args.per_kind * len(COPY_KINDS), replace=False)
    planted: list[np.ndarray] = []
    truth_kind: list[str] = []
    truth_pairs: dict[tuple[int, int], str] = {}
    for j, i in enumerate(chosen):
        kind = COPY_KINDS[j % len(COPY_KINDS)]
        copy, _, _ = make_copies([originals[i]], kinds=[kind], seed=args.seed + 1000 + j)
        truth_pairs[(int(i), n + len(planted))] = kind
        planted.append(copy[0])
        truth_kind.append(kind)
    images = originals + planted
    hashes = [pixel_hash(p) for p in images]
    short = [min(p.shape[:2]) for p in images]
    size, reason = resolve_image_size("auto", backbone_size=backbone, short_sides=short,
                                      upscale=8)
    print(f"\n=== {name}: {n} originals + {len(planted)} planted near copies "
          f"({args.per_kind} per kind); embed.image_size {reason}")

    start = time.perf_counter()
    sample = np.sort(np.random.default_rng(args.seed).choice(len(images), size=min(
        args.sample, len(images)), replace=False))
    copies, source, kinds = make_copies([images[i] for i in sample], seed=args.seed)
    source = sample[source]
    t_copies = time.perf_counter() - start
    start = time.perf_counter()
    cached = args.cache / f"{name}_{args.seed}_{args.per_kind}_{args.sample}.npz" \
        if args.cache else None
    if cached is not None and cached.is_file():
        stored = np.load(cached)
        sig_all, sig_copies = {"embedding": stored["all"]}, {"embedding": stored["copies"]}
    else:
        sig_all = {"embedding": embed(images, model, prep, size)}
        sig_copies = {"embedding": embed(copies, model, prep, size)}
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, all=sig_all["embedding"], copies=sig_copies["embedding"])
    t_embed = time.perf_counter() - start
    start = time.perf_counter()
    sig_all["thumbnail"], sig_copies["thumbnail"] = thumbnails(images), thumbnails(copies)
    sig_all["phash"], sig_copies["phash"] = phash(images), phash(copies)
    sig_all["aligned"], sig_copies["aligned"] = aligned_views(images), aligned_views(copies)
    sig_all["copy_model"] = CopyModel(tiny_pixels(images), sig_all["aligned"])
    sig_copies["copy_model"] = CopyModel(tiny_pixels(copies), sig_copies["aligned"])
    t_pixel = time.perf_counter() - start
    print(f"time (2 shared CPU cores): copies {t_copies:.1f} s, embeddings of "
          f"{len(images)} + {len(copies)} images {t_embed:.1f} s, thumbnails+phash "
          f"{t_pixel:.1f} s")
    ids = [f"{i:06d}" for i in range(len(images))]
    valid = np.ones(len(images), bool)
    for combo in [("embedding",), ("thumbnail",), ("phash",), ("aligned",), ("copy_model",),
                  ("embedding", "thumbnail", "phash"), SIGNALS]:
        if True:
            start = time.perf_counter()
            sigs = [sig_all[c] for c in combo]
            pos = copy_similarities(sigs, [sig_copies[c] for c in combo], source)
            neg, owner = distinct_similarities(sigs, hashes=hashes, k=1)
            cal = calibrate(pos, neg, signals=combo, owner=owner, kinds=kinds,
                            max_false_rate=args.max_false_rate,
                            **(OLD if args.estimator == "old" else {}))
            clusters = near_copy_clusters(sigs, cal, k=10, exact_max=20000, probes=8,
                                          order=ids, valid=valid)
            t_cal = time.perf_counter() - start
            found = found_pairs(clusters, hashes)
            hit = {p: k for p, k in truth_pairs.items() if p in found}
            precision = len(hit) / len(found) if found else float("nan")
            recall = len(hit) / len(truth_pairs)
            per_kind = " ".join(
                f"{k} {sum(v == k for v in hit.values())}/{args.per_kind}" for k in COPY_KINDS)
            print(f"[{'+'.join(combo):20s}] {cal.summary()}")
            est = " ".join(f"{k} {v:.2f}" for k, v in cal.recall_by_kind.items())
            print(f"    estimated recall by kind: {est}")
            # the split audit: the planted copies as a test folder, the rest as train
            test = np.arange(n, len(images))
            rows, cols, _ = copy_pairs([sig_all[c][test] for c in combo],
                                       [sig_all[c][:n] for c in combo], cal)
            audit = {(int(cols[j]), int(test[rows[j]])) for j in range(len(rows))}
            audit_hit = sum(p in audit for p in truth_pairs)
            print(f"    split audit (planted copies as the test set): {audit_hit}/"
                  f"{len(truth_pairs)} copies caught, {len(audit) - audit_hit} other pairs")
            print(f"    MEASURED on planted: recall {recall:.3f} ({len(hit)}/{len(truth_pairs)}),"
                  f" precision {precision:.3f} ({len(hit)}/{len(found)}); {per_kind}; "
                  f"calibrate+detect {t_cal:.1f} s")
            # the found pairs that touch a planted copy, and those between two originals
            # (pairs the data held before anything was planted)
            touching = [p for p in found if p[1] >= n]
            print(f"    of the found pairs: {len(touching)} touch a planted copy "
                  f"({sum(p in truth_pairs for p in touching)} right), "
                  f"{len(found) - len(touching)} are between two originals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="photos,digits,textures,lfw,fashion")
    parser.add_argument("--hymenoptera", type=Path, default=HYMENOPTERA)
    parser.add_argument("--per-kind", type=int, default=6)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--max-false-rate", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="keep the embeddings here (reruns)")
    parser.add_argument("--estimator", choices=["shipped", "old"], default="shipped",
                        help="old: calibrate()'s share estimate before 2026-12")
    add_smoke(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(name="tf_efficientnet_lite0", weights="default", drop_rate=0.0)
    if args.smoke:
        args.sets, args.per_kind, args.sample = "textures", 1, 12
        cfg = ModelConfig(name=TINY_MODEL, weights="none", drop_rate=0.0)
    model, prep, _ = create_model(cfg, num_classes=0)
    model.eval()
    library, arch = resolve_arch(cfg.name)
    backbone, _, why = backbone_input_size(library, arch, cfg.weights)
    print(f"backbone {arch}: {backbone} px ({why})")
    loaders = {"photos": lambda: photos(args.hymenoptera), "digits": digits,
               "textures": (lambda: textures(40, 48)) if args.smoke else textures,
               "lfw": lfw, "fashion": fashion}
    for name in args.sets.split(","):
        run_set(name, loaders[name](), model, prep, backbone, args)


if __name__ == "__main__":
    main()
