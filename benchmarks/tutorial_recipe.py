"""The PyTorch transfer-learning tutorial's recipe, by hand, as a yardstick for photos.

    python benchmarks/tutorial_recipe.py ROOT [--test-dir val] [--epochs 3 3] [--size 224]
    python benchmarks/tutorial_recipe.py --smoke

ROOT holds ``train/`` and a test folder (``val/`` or ``test/``) of class folders, as the
tutorial's ants/bees do. torchvision's ``ImageFolder`` decodes every JPEG each epoch with
the tutorial's transforms (RandomResizedCrop + flip for training; Resize + CenterCrop for
testing), 2 DataLoader workers; the backbone is the pipeline's ``model.name`` with the
same pretrained weights (``pipeline.finetuning.backbones.create_model``). First the head
alone for ``epochs[0]`` epochs, then the head and the 2 layer groups below it for
``epochs[1]`` epochs (the tutorial's "last blocks"), SGD lr 0.001, momentum 0.9, StepLR
(x0.1 every 7 epochs), cross-entropy; the last epoch's model is scored on the test folder
(the tutorial keeps the best epoch on that same folder, which flatters it; this does
not). Prints accuracy with its 95 % bootstrap interval and the whole wall time (model
build, both phases, the test pass). Time it alone: 2 cores. ``benchmarks/real_data.py
--recipes`` runs it beside the pipeline. ``--smoke``: tiny generated images, timm's tiny
test model with random weights, 1 + 1 epochs at 32 px.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import TINY_MODEL, add_smoke, write_tree
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from pipeline.finetuning.backbones import create_model
from pipeline.finetuning.models import layer_groups, set_trainable, train_mode
from pipeline.params.model import ModelConfig
from pipeline.scoring.metrics import bootstrap_ci


def loaders(root: Path, test_dir: str, size: int, mean: tuple, std: tuple, batch: int
            ) -> tuple[DataLoader, DataLoader, list[str]]:
    norm = transforms.Normalize(mean, std)
    train = datasets.ImageFolder(root / "train", transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), norm]))
    test = datasets.ImageFolder(root / test_dir, transforms.Compose([
        transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size),
        transforms.ToTensor(), norm]))
    if test.classes != train.classes:
        raise SystemExit(f"{root}: train/ and {test_dir}/ hold different classes")
    return (DataLoader(train, batch, shuffle=True, num_workers=2),
            DataLoader(test, batch, num_workers=2), train.classes)


def run(root: Path, *, test_dir: str = "val", epochs: tuple[int, int] = (3, 3),
        size: int = 224, model_name: str = "tf_efficientnet_lite0", weights: str = "default",
        batch: int = 16, seed: int = 0) -> dict:
    """Train as the tutorial does; the test accuracy, its interval and the wall time."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    classes = datasets.ImageFolder(root / "train").classes
    model, prep, _ = create_model(ModelConfig(model_name, weights, 0.0), len(classes))
    train, test, _ = loaders(root, test_dir, size, prep.mean, prep.std, batch)
    groups = layer_groups(model)
    loss_fn = nn.CrossEntropyLoss()
    for phase, (n, top) in enumerate(zip(epochs, (1, 3))):
        set_trainable(model, groups, top)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                    lr=0.001, momentum=0.9)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
        for epoch in range(n):
            train_mode(model, bn="train")  # the tutorial's model.train()
            for x, y in train:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            schedule.step()
            print(f"phase {phase} epoch {epoch + 1}: done at {time.perf_counter() - start:.0f} s",
                  flush=True)
    model.eval()
    labels, preds = [], []
    with torch.no_grad():
        for x, y in test:
            preds.append(model(x).argmax(1).numpy())
            labels.append(y.numpy())
    y_true, y_pred = np.concatenate(labels), np.concatenate(preds)
    accuracy = float((y_true == y_pred).mean())
    low, high = bootstrap_ci(y_true, y_pred, lambda a, b: float((a == b).mean()), n=1000,
                             seed=0)
    return {"accuracy": accuracy, "ci": (low, high), "test_images": len(y_true),
            "train_images": len(train.dataset), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, nargs="?")
    parser.add_argument("--test-dir", default="val")
    parser.add_argument("--epochs", type=int, nargs=2, default=(3, 3))
    parser.add_argument("--size", type=int, default=224)
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            root = write_tree(Path(tmp), per_class=6, size=40, splits=("train", "val"))
            r = run(root, epochs=(1, 1), size=32, model_name=TINY_MODEL, weights="none")
    elif args.root is None:
        parser.error("give ROOT (or --smoke)")
    else:
        r = run(args.root, test_dir=args.test_dir, epochs=tuple(args.epochs), size=args.size)
    print(f"tutorial recipe: {r['train_images']} train images, test accuracy "
          f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] on {r['test_images']}, "
          f"{r['seconds']:.0f} s whole")


if __name__ == "__main__":
    main()
