"""Pictures and HTML for the report: matplotlib figures and self-contained HTML pieces.

Everything returns PNG bytes or HTML strings; the report stage decides what goes where.
Images are embedded as data URIs so the page opens offline from any folder.
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from pipeline.contracts.manifest import ISSUES, resolve, split_issues  # noqa: E402
from pipeline.core import paths  # noqa: E402
from pipeline.modality import UnreadableItem  # noqa: E402
from pipeline.modality.image.decoding import IMAGES  # noqa: E402
from pipeline.modality.itemkinds import item_texts  # noqa: E402
from pipeline.reporting.pages import img_tag  # noqa: E402

THUMB = 64  # pixels
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;margin-top:2em}
table.t{border-collapse:collapse;font-size:13px;margin:.5em 0}
table.t td,table.t th{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.t{display:block;max-width:100%;overflow-x:auto}table.t td{overflow-wrap:anywhere}
table.facts th{text-align:left;font-weight:normal;color:#555;background:#fafafa}
.muted{color:#666}code{background:#f3f3f3;padding:1px 4px}img{max-width:100%}"""
# Marks the page once every image has decoded: data-broken-images="0" when all load.
CHECK_IMAGES = """<script>window.addEventListener('load',function(){var b=0;
document.querySelectorAll('img').forEach(function(i){if(!i.complete||i.naturalWidth===0)b++;});
document.body.setAttribute('data-broken-images',String(b));
document.body.setAttribute('data-images',String(document.images.length));});</script>"""


# control characters but the line break, which no font draws
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def plain(text: object) -> str:
    """``text`` as matplotlib should draw it, letter for letter: its mathtext reads what
    lies between two ``$`` as a formula (``US$ vs C$`` loses its dollars, and an unpaired
    or bad one stops the figure), so every ``$`` is escaped; a control character (a
    carriage return, a tab) is drawn as its escape, ``\\r``. Every label, caption and
    title of the figures below goes through here."""
    shown = CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))
    return shown.replace("$", r"\$")


def png(fig: Figure) -> bytes:
    """Render and close a figure; the bytes carry no date, so reruns match."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight",
                metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def table(frame: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """An HTML table of a DataFrame, floats formatted. A table wider than the page
    scrolls inside it, and long cells (paths, hashes) wrap."""
    return frame.to_html(index=False, border=0, classes="t", na_rep="",
                         float_format=lambda v: float_format.format(v), escape=True)


def facts(values: Mapping[str, Any], *, per_row: int = 3, float_format: str = "{:.4f}"
          ) -> str:
    """A record of many fields (one row of a wide table: clean's counts, the near-copy
    calibration) as name/value pairs, ``per_row`` pairs a line, so it fits the page: as
    one row of 13 columns it ran past 1,280 pixels."""
    def cell(value: Any) -> str:
        text = float_format.format(value) if isinstance(value, float) else str(value)
        return html.escape(text)

    items = list(values.items())
    rows = ["<tr>" + "".join(f"<th>{html.escape(str(k))}</th><td>{cell(v)}</td>"
                             for k, v in items[i:i + per_row]) + "</tr>"
            for i in range(0, len(items), per_row)]
    return "<table class='t facts'>" + "".join(rows) + "</table>"


def confusion_figure(labels: Sequence[str], preds: Sequence[str], classes: list[str]) -> bytes:
    """Row-normalised confusion matrix (recall on the diagonal)."""
    matrix = confusion_matrix(labels, preds, labels=classes).astype(float)
    matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    side = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    names = [plain(c) for c in classes]
    ax.set_xticks(range(len(classes)), names, rotation=90)
    ax.set_yticks(range(len(classes)), names)
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
    lines, names = [], []
    for name, part in frame.groupby("curve", sort=False):
        lines += ax.plot(part[x], part[y], marker="o" if len(part) < 20 else None, ms=3)
        names.append(plain(name))
    if diagonal:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(plain(title))
    # handles given: a legend made from the lines' own labels would leave out every
    # class whose name starts with "_" (matplotlib's mark for "no legend entry")
    ax.legend(lines, names, fontsize=7, loc="best")
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
                         color=cmap(i / max(1, len(lrs) - 1)), label=plain(name))
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
        ax.set_title(plain(caption), fontsize=7)
    if title:
        fig.suptitle(plain(title))
    return png(fig)


def text_list_figure(lines: Sequence[str], *, title: str = "", width: int = 110) -> bytes:
    """A PNG of text lines, each cut to ``width`` characters (a text project's mistakes)."""
    shown = [plain(" ".join(line.split()))[:width] for line in lines] or ["none"]
    fig = plt.figure(figsize=(11, 0.3 * len(shown) + 0.8))
    for i, line in enumerate(shown):
        fig.text(0.01, 1 - (i + 1.5) / (len(shown) + 2), line, fontsize=8, family="monospace")
    if title:
        fig.suptitle(plain(title))
    return png(fig)


def snippets_table(rows: Sequence[tuple[str, str]], texts: Sequence[str]) -> str:
    """An HTML table of (caption, detail) and each text's start."""
    from pipeline.reporting.pages import snippet_tag

    return cells_table(rows, [snippet_tag(t) for t in texts])


def cells_table(rows: Sequence[tuple[str, str]], cells: Sequence[str]) -> str:
    """An HTML table of (caption, detail) and each item's HTML (a text's start, another
    modality's thumbnail)."""
    body = "".join(f"<tr><td>{html.escape(a)}<br><span class='muted'>{html.escape(b)}"
                   f"</span></td><td>{c}</td></tr>" for (a, b), c in zip(rows, cells))
    return f"<table>{body}</table>" if body else "<p>None.</p>"


# ----------------------------------------------------------------------------- HTML


def section(title: str, *parts: str) -> str:
    """A titled section of the page."""
    return f"<h2>{html.escape(title)}</h2>\n" + "\n".join(parts)


def page(body: list[str]) -> str:
    """The whole self-contained page around its sections."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Fine-tuning report"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) +
            f"\n{CHECK_IMAGES}</body></html>\n")


def issues_html(clean: pd.DataFrame, root: Path, *, limit: int = 16, modality: str = "image"
                ) -> list[str]:
    """One part per issue clean found: a listing (the first ``limit`` rows, by image_id;
    label issues with cleanlab's suggested label) and thumbnails from the source files
    (texts: the start of each)."""
    parts = []
    flagged = clean[clean["issues"] != ""]
    for issue in ISSUES:
        rows = flagged[flagged["issues"].map(lambda x, i=issue: i in split_issues(x))]
        if rows.empty:
            continue
        head = rows.sort_values("image_id").head(limit)
        columns = ["path", "label", "keep", "cluster_id", "error"]
        if issue == "label_issue" and "suggested_label" in head:
            columns.insert(2, "suggested_label")
        listing = table(head[columns])
        shown = (f"<p class='muted'>showing {len(head)} of {len(rows)} (all in "
                 f"{paths.REVIEW} and {paths.REVIEW_PAGE})</p>"
                 if len(rows) > len(head) else "")
        if modality == "text":
            found = item_texts(head, root, range(len(head)))
            parts.append(f"<h3>{issue}: {len(rows)} texts, {int((~rows['keep']).sum())} "
                         f"dropped</h3>{shown}{listing}" + snippets_table(
                             list(zip(head["path"], head["label"])),
                             [f[0] if isinstance(f, tuple) else f"unreadable: {f}"
                              for f in found]))
            continue
        if modality != "image":  # another modality: its codec's thumbnails
            from pipeline.reporting.pages import preview_tag

            parts.append(f"<h3>{issue}: {len(rows)} items, {int((~rows['keep']).sum())} "
                         f"dropped</h3>{shown}{listing}" + cells_table(
                             list(zip(head["path"], head["label"])),
                             [preview_tag(resolve(root, rel), i, modality=modality)
                              for rel, i in zip(head["path"], head["image_id"])]))
            continue
        thumbs, captions = [], []
        for rel, label in zip(head["path"], head["label"]):
            try:
                pixels = IMAGES.decode(resolve(root, rel), max_pixels=1 << 26)
                thumbs.append(IMAGES.fit(pixels, THUMB, fit="pad"))
                captions.append(f"{label}: {Path(rel).name[:18]}")
            except UnreadableItem:
                continue
        grid = img_tag(image_grid(thumbs, captions), issue) if thumbs else ""
        parts.append(f"<h3>{issue}: {len(rows)} images, {int((~rows['keep']).sum())} "
                     f"dropped</h3>{shown}{listing}{grid}")
    return parts


def split_counts(split: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Images per class and split."""
    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=classes, columns=["train", "val", "test"], fill_value=0)
    counts = counts.reset_index().rename(columns={"label": "class"})
    counts.columns.name = None
    return counts


def metric_rows(results: dict[str, Any], log_loss_scaled: float | None = None
                ) -> pd.DataFrame:
    """The test metrics, accuracy and macro-F1 with their 95 % intervals first; log-loss
    and ECE each with its value after the temperature scaling fitted on val beside it
    (``log_loss_scaled``: :func:`pipeline.scoring.metrics.scaled_log_loss`), since label
    smoothing makes the raw log-loss look worse than the model is."""
    ci = "{:.4f} [{:.4f}, {:.4f}]"
    rows = [("accuracy (95 % CI)", ci.format(results["accuracy"],
             results["accuracy_ci_low"], results["accuracy_ci_high"])),
            ("macro-F1 (95 % CI)", ci.format(results["macro_f1"],
             results["macro_f1_ci_low"], results["macro_f1_ci_high"]))]
    scaled = {"log_loss": log_loss_scaled, "ece": results.get("ece_calibrated")}
    for key, value in results.items():
        if key.startswith(("accuracy", "macro_f1")) or key == "ece_calibrated":
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        after = scaled.get(key)
        if after is not None:
            text += (f" ({after:.4f} after temperature scaling, "
                     f"T = {results.get('temperature', 1.0):.3g})")
        rows.append((key, text))
    return pd.DataFrame(rows, columns=["metric", "value"])


def phases_table(model_meta: dict[str, Any]) -> pd.DataFrame:
    """The training schedule that ran (its wall times are in :func:`timings_page`)."""
    phases = pd.DataFrame(model_meta["params"]["train"]["phases"])
    phases.insert(0, "phase", range(len(phases)))
    phases["lr"] = phases["lr_mult"] * model_meta["params"]["train"]["lr"]  # the head's
    return phases


def provenance_table(model_meta: dict[str, Any]) -> pd.DataFrame:
    """What made the model's numbers: the lock, Python, the device, kernels and threads."""
    keys = ["lock_sha256", "python", "device", "cpu_capability", "threads", "pins"]
    return pd.DataFrame([(k, str(model_meta.get(k, ""))) for k in keys],
                        columns=["fact", "value"])


def timings_html() -> str:
    """The report's wall-time section: a frame showing ``timings.html`` beside the page.
    The times stay out of the page itself, so that its hash reproduces (see
    :mod:`pipeline.core.provenance`)."""
    return ("<p>Wall times, the machine and the commit of the run that made these files "
            "(<code>metrics/all/run.json</code>; the train time also in <code>dvc metrics "
            "show</code>). They are "
            "kept out of this page so that its hash reproduces.</p>"
            "<iframe src='timings.html' title='wall times' "
            "style='width:100%;height:14em;border:1px solid #ccc'></iframe>")


def timings_page(record: dict[str, Any]) -> str:
    """``reports/timings.html``: the run record as a table (never a DVC output)."""
    rows = pd.DataFrame(sorted(record.items()), columns=["key", "value"])
    return page([table(rows, "{:.4g}") if len(rows) else
                 "<p>No run record yet (metrics/all/run.json).</p>"])


def model_table(model_meta: dict[str, Any]) -> pd.DataFrame:
    """Library, architecture, weights and preprocessing of the trained model."""
    pretrained, prep = model_meta["pretrained"], model_meta["preprocessing"]
    if prep.get("modality") == "text":
        return pd.DataFrame([{"library": model_meta["library"],
                              "architecture": model_meta["arch"],
                              "weights": pretrained["weights"],
                              "sha256": pretrained.get("sha256", ""),
                              "encoder": prep.get("encoder", ""),
                              "max length": prep.get("max_length", ""),
                              "truncation": prep.get("truncation", "")}])
    if "image_size" not in prep:  # another modality: what its meta records
        return pd.DataFrame([{"library": model_meta["library"],
                              "architecture": model_meta["arch"],
                              "weights": pretrained.get("weights", ""),
                              **{k: str(v) for k, v in prep.items()}}])
    return pd.DataFrame([{"library": model_meta["library"], "architecture": model_meta["arch"],
                          "weights": pretrained["weights"],
                          "sha256": pretrained.get("sha256", ""),
                          "image size": prep["image_size"], "mean": str(prep["mean"]),
                          "std": str(prep["std"])}])


def resolved_html(clean_counts: dict[str, Any], cache_image_size: int, cache_reason: str,
                  split_metrics: dict[str, Any], train_auto: Sequence[str] = (),
                  text: dict[str, Any] | None = None) -> list[str]:
    """What ``auto`` resolved to: image sizes (texts: the max length), the train settings
    that follow the data's profile, and the near-copy calibration, with its estimated
    error rates, and a loud warning when nothing separates copies."""
    parts = [f"<p>Image sizes: embed <b>{clean_counts.get('embed_image_size', '?')} px</b>, "
             f"cache <b>{cache_image_size} px</b> ({html.escape(cache_reason or 'as set')})."
             f"</p>" if text is None else
             f"<p>Token ids of {html.escape(str(text.get('encoder', '')))}: max length "
             f"{html.escape(str(text.get('max_length_reason', '')))}; truncation "
             f"{html.escape(str(text.get('truncation', '')))}.</p>"]
    if train_auto:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in train_auto)
                     + "</ul>")
    cal = {k.removeprefix("near_duplicate_"): v for k, v in clean_counts.items()
           if k.startswith("near_duplicate_")}
    if not cal:
        parts.append("<p>Near copies: the explicit clean.near_duplicate_threshold (cosine "
                     "similarity of embeddings), not calibrated.</p>")
        return parts
    if not cal.get("separable", True):
        parts.append("<p class='warn'><b>WARNING: near-copy detection cannot separate "
                     "synthetic copies from distinct images on this data: near copies "
                     "will be missed.</b></p>")
    if cal.get("missed_kinds", "none") != "none":
        parts.append("<p class='warn'><b>WARNING: near copies made by "
                     f"{html.escape(str(cal['missed_kinds']))} will mostly be missed "
                     "(their estimated recall is below 0.9; see below).</b></p>")
    where = ("clean and the split's leakage audit"
             if split_metrics.get("audit_rule_calibrated") else "clean")
    parts.append(f"<p>Near copies ({where}): calibrated on synthetic copies of the "
                 + ("images (JPEG, resize, crop, brightness, combined)." if text is None else
                    "texts (dropped and swapped words, truncation, signatures, case and "
                    "punctuation, reordered sentences, combined).") + "</p>")
    parts.append(facts(cal))
    return parts


def split_html(split_cfg: Any, seed: int, split_metrics: dict[str, Any]) -> list[str]:
    """The split's method, fractions and seed, and the leakage audit's counts."""
    leak_keys = {k: v for k, v in split_metrics.items() if k.startswith("leak")}
    return [f"<p>Method <code>{html.escape(split_cfg.method)}</code>, fractions "
            f"{html.escape(json.dumps(dataclasses.asdict(split_cfg.fractions)))}, seed "
            f"{seed}. Duplicate clusters are kept inside one split.</p>",
            facts(leak_keys) if leak_keys else
            "<p>Leakage audit: not run by this version of the split stage.</p>"]
