"""Pictures and HTML for the report: matplotlib figures and self-contained HTML pieces.

Everything returns PNG bytes or HTML strings; the report stage decides what goes where.
Images are embedded as data URIs so the page opens offline from any folder.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


def png(fig: Figure) -> bytes:
    """Render and close a figure; the bytes carry no date, so reruns match."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight",
                metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """An HTML table of a DataFrame, floats formatted."""
    return frame.to_html(index=False, border=0, classes="t", na_rep="",
                         float_format=lambda v: float_format.format(v), escape=True)


def confusion_figure(labels: Sequence[str], preds: Sequence[str], classes: list[str]) -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal)."""
    matrix = confusion_matrix(labels, preds, labels=classes).astype(float)
    matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_title("Confusion matrix, normalised by true class")
    return png(fig)


def curves_figure(frame: pd.DataFrame, x: str, y: str, title: str, *,
                  diagonal: bool = False) -> bytes:
    """One line per value of frame['curve']."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, part in frame.groupby("curve", sort=False):
        ax.plot(part[x], part[y], marker="o" if len(part) < 20 else None, ms=3, label=name)
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return png(fig)


def training_figure(curves: dict[str, pd.DataFrame],
                    lrs: dict[str, pd.DataFrame] | None = None) -> bytes:
    """Loss, accuracy and (given ``lrs``) each layer group's learning rate per epoch, from
    dvclive's tables (step, value)."""
    lrs = lrs or {}
    fig, axes = plt.subplots(1, 3 if lrs else 2, figsize=(15 if lrs else 10, 3.8))
    left, right = axes[0], axes[1]
    for name in ("train_loss", "val_loss"):
        if name in curves:
            left.plot(curves[name]["step"] + 1, curves[name][name], marker="o", label=name)
    if "val_accuracy" in curves:
        right.plot(curves["val_accuracy"]["step"] + 1, curves["val_accuracy"]["val_accuracy"],
                   marker="o", color="tab:green", label="val_accuracy")
    if "phase" in curves:  # shade every other phase
        phase = curves["phase"]
        for ax in (left, right):
            for p in phase["phase"].unique()[1::2]:
                steps = phase.loc[phase["phase"] == p, "step"] + 1
                ax.axvspan(steps.min() - 0.5, steps.max() + 0.5, color="grey", alpha=0.12)
    left.set_xlabel("epoch")
    right.set_xlabel("epoch")
    left.legend()
    right.legend()
    left.set_title("Loss (shaded: alternate phases)")
    right.set_title("Validation accuracy")
    if lrs:
        cmap = plt.get_cmap("viridis")
        for i, (name, table) in enumerate(sorted(lrs.items())):
            axes[2].plot(table["step"] + 1, table.iloc[:, -1], marker=".",
                         color=cmap(i / max(1, len(lrs) - 1)), label=name)
        axes[2].set_yscale("symlog", linthresh=1e-6)
        axes[2].set_xlabel("epoch")
        axes[2].set_title("Learning rate per layer group (end of epoch)")
        axes[2].legend(fontsize=6)
    return png(fig)


def image_grid(images: Sequence[np.ndarray], captions: Sequence[str], *, columns: int = 8,
               title: str = "") -> bytes:
    """Thumbnails (H, W, 3) uint8 with a caption under each."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    if title:
        fig.suptitle(title)
    return png(fig)
