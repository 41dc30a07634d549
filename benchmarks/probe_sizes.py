"""At what input size are a pretrained backbone's frozen features best on photos?

    python benchmarks/probe_sizes.py [--root ../shared/data/hymenoptera] [--sizes 224 256 288 320]
        [--smoke]

The evidence for ``cache.image_size: auto`` giving photos the backbone's test size
(pipeline/finetuning/autosize.py). Decodes the ants/bees photos once (its ``train/`` to fit,
``val/`` to score), centre-crops them to each size with the pipeline's own ``fit_image``,
takes model.name's pooled features (params.yaml's backbone and weights, eval mode) and
prints the test accuracy of a standardised logistic regression at three strengths.
Nothing is written. ``--smoke``: a tiny train/ + val/ tree of 48-px images made in a
temporary folder, sizes 32 and 48, timm's tiny test model with random weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import TINY_MODEL, add_smoke, write_tree
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.finetuning.backbones import BackboneSpec, create_model
from pipeline.modality.image.decoding import decode_image, fit_image
from pipeline.modality.image.inputs import to_input

REPO = Path(__file__).resolve().parents[1]


def features(model: torch.nn.Module, pixels: list[np.ndarray], size: int, prep) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(pixels), 32):
            batch = np.stack([fit_image(p, size, fit="crop") for p in pixels[start:start + 32]])
            out.append(model(to_input(torch.from_numpy(batch), prep, torch.device("cpu"))))
    return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/hymenoptera")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 288, 320])
    add_smoke(parser)
    args = parser.parse_args()
    model_cfg = yaml.safe_load((REPO / "params.yaml").read_text())["model"]
    if not args.smoke:
        probe(args.root, args.sizes, model_cfg)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = write_tree(Path(tmp), per_class=6, size=48, splits=("train", "val"))
        probe(root, [32, 48], {"name": TINY_MODEL, "weights": "none"})


def probe(root: Path, sizes: list[int], model_cfg: dict) -> None:
    """The table: per size, the probe's test accuracy at three strengths."""
    torch.set_num_threads(2)
    rows = [(split, label, path) for split in ("train", "val")
            for label in sorted(p.name for p in (root / split).iterdir())
            for path in sorted((root / split / label).iterdir())]
    pixels = [decode_image(path, max_pixels=89478485) for _, _, path in rows]
    fit = np.array([split == "train" for split, _, _ in rows])
    labels = np.array([label for _, label, _ in rows])
    model, prep, _ = create_model(BackboneSpec(model_cfg["name"], model_cfg["weights"]), 0)
    model.eval()
    print(f"{model_cfg['name']}: fit on {fit.sum()} train/ photos, score on "
          f"{(~fit).sum()} val/ photos")
    for size in sizes:
        start = time.perf_counter()
        x = features(model, pixels, size, prep)
        scores = []
        for c in (0.01, 0.1, 1.0):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
            clf.fit(x[fit], labels[fit])
            scores.append(f"C={c:g}: {(clf.predict(x[~fit]) == labels[~fit]).mean():.3f}")
        print(f"{size} px: {', '.join(scores)} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
