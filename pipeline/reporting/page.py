"""The report page from what the stages wrote: the inputs read (manifests, metrics,
curves, the model's meta), the figures (confusion, reliability, the worst test mistakes),
the samples per class (an image grid from the cache; texts' starts or another modality's
thumbnails), the sections in order, and what params differ from the committed ones. It
recomputes nothing another stage computed; the report stage writes the page.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.contracts.cachefiles import CacheMeta, NpyRows, images_name, read_meta
from pipeline.contracts.labelfiles import prediction_arrays, read_labelled, read_predictions
from pipeline.contracts.manifest import read_manifest, resolve
from pipeline.core.config import PARAMS_FILE
from pipeline.modality import plugins
from pipeline.modality.itemkinds import item_texts
from pipeline.reporting.pages import img_tag, preview_tag, snippet_tag
from pipeline.reporting.report import (
    THUMB,
    cells_table,
    confusion_figure,
    curves_figure,
    facts,
    image_grid,
    issues_html,
    metric_rows,
    model_table,
    phases_table,
    provenance_table,
    resolved_html,
    section,
    split_counts,
    split_html,
    table,
    text_list_figure,
    timings_html,
    training_figure,
)
from pipeline.scoring.metrics import scaled_log_loss


def _thumbs_from_cache(cache_dir: Path, split: str, ids: list[str], wanted: list[str]
                       ) -> list[np.ndarray]:
    rows = NpyRows(cache_dir / images_name(split))
    position = {image_id: i for i, image_id in enumerate(ids)}
    return list(rows[np.array([position[w] for w in wanted], dtype=np.int64)]) if wanted else []


@dataclass
class Inputs:
    """Everything the report reads, from the files the other stages wrote."""

    clean: pd.DataFrame
    split: pd.DataFrame
    cache: CacheMeta
    model_meta: dict[str, Any]
    results: dict[str, Any]  # metrics/all/eval.json
    train_metrics: dict[str, Any]
    clean_counts: dict[str, Any]
    split_metrics: dict[str, Any]
    per_class: pd.DataFrame
    predictions: pd.DataFrame
    plots: dict[str, pd.DataFrame]  # roc, pr, reliability
    curves: dict[str, pd.DataFrame]  # dvclive's per-epoch metrics
    lrs: dict[str, pd.DataFrame]  # dvclive's learning rates per layer group
    root: str = ""  # data.root: where a text project's texts are read from


def read_inputs(clean: Path, split: Path, cache_dir: Path, model: Path, metrics_dir: Path,
                curves_dir: Path) -> Inputs:
    """Read every input of the report."""
    def read_json(name: str) -> dict[str, Any]:  # every number, not only the headline
        return dict(json.loads((metrics_dir / "all" / name).read_text()))

    curves = curves_dir / "plots" / "metrics"
    return Inputs(
        clean=read_manifest(clean), split=read_manifest(split), cache=read_meta(cache_dir),
        model_meta=torch.load(model, map_location="cpu", weights_only=True)["meta"],
        results=read_json("eval.json"), train_metrics=read_json("train.json"),
        clean_counts=read_json("clean.json"), split_metrics=read_json("split.json"),
        per_class=read_labelled(metrics_dir / "per_class.csv", ["class"]),
        predictions=read_predictions(metrics_dir / "predictions.csv"),
        plots={n: read_labelled(metrics_dir / "plots" / f"{n}.csv", ["curve"])
               for n in ("roc", "pr", "reliability")},
        curves={p.stem: pd.read_csv(p, sep="\t") for p in sorted(curves.glob("*.tsv"))},
        lrs={p.stem: pd.read_csv(p, sep="\t") for p in sorted(curves.glob("lr/*.tsv"))})


def scaled_loss(inp: Inputs) -> float:
    """The test log-loss after the temperature scaling evaluate fitted on val (its T in
    eval.json), from the prediction table: shown beside the raw log-loss."""
    labels, probs = prediction_arrays(inp.predictions, inp.model_meta["classes"])
    return scaled_log_loss(labels, probs, float(inp.results.get("temperature", 1.0)))


def worst_mistakes(inp: Inputs, limit: int = 24) -> pd.DataFrame:
    """The test predictions that are wrong, highest loss first (with ``loss``)."""
    classes, predictions = inp.model_meta["classes"], inp.predictions
    true_prob = predictions[[f"prob_{c}" for c in classes]].to_numpy()[
        np.arange(len(predictions)), predictions["label"].map(classes.index).to_numpy()]
    wrong = predictions.assign(loss=-np.log(np.clip(true_prob, 1e-12, 1)))
    return wrong[wrong["label"] != wrong["pred"]].sort_values(
        ["loss", "image_id"], ascending=[False, True]).head(limit)


def figures(inp: Inputs, cache_dir: Path) -> dict[str, bytes]:
    """The PNGs written next to the page: confusion, reliability, worst test mistakes."""
    classes, predictions = inp.model_meta["classes"], inp.predictions
    out = {
        "confusion": confusion_figure(predictions["label"], predictions["pred"], classes),
        "reliability": curves_figure(inp.plots["reliability"], "confidence", "accuracy",
                                     "Reliability diagram (test)", diagonal=True),
    }
    wrong = worst_mistakes(inp)
    if inp.cache.modality != "image":
        texts = (texts_of(inp, list(wrong["image_id"])) if inp.cache.modality == "text"
                 else list(wrong["path"]))
        out["mistakes"] = text_list_figure(
            [f"{t} → {p} (loss {v:.2f}): {x}" for t, p, v, x in zip(
                wrong["label"], wrong["pred"], wrong["loss"], texts)],
            title="Test mistakes with the highest loss")
        return out
    mistakes = _thumbs_from_cache(cache_dir, "test", inp.cache.ids["test"],
                                  list(wrong["image_id"]))
    out["mistakes"] = image_grid(
        mistakes or [np.zeros((THUMB, THUMB, 3), np.uint8)],
        [f"{t} → {p}\nloss {v:.2f}" for t, p, v in zip(wrong["label"], wrong["pred"],
                                                        wrong["loss"])] or ["no mistakes"],
        title="Test mistakes with the highest loss")
    return out


def texts_of(inp: Inputs, ids: list[str]) -> list[str]:
    """The texts of these split rows (inline, or read from their files)."""
    rows = inp.split.set_index("image_id").loc[ids].reset_index()
    return [f[0] if isinstance(f, tuple) else f"unreadable: {f}"
            for f in item_texts(rows, Path(inp.root), range(len(rows)))]


def previews_of(inp: Inputs, ids: list[str]) -> list[str]:
    """How the page shows these split rows: a text's start, or another modality's
    thumbnail (its codec, from the source file)."""
    if inp.cache.modality == "text":
        return [snippet_tag(text) for text in texts_of(inp, ids)]
    rows = inp.split.set_index("image_id").loc[ids]
    return [preview_tag(resolve(Path(inp.root), rel), i, modality=inp.cache.modality)
            for i, rel in zip(ids, rows["path"])]


def mistakes_html(inp: Inputs) -> str:
    """A text (or another modality's) project's worst test mistakes as a table."""
    wrong = worst_mistakes(inp)
    return cells_table([(f"{t} → {p}", f"loss {v:.2f}, {i}") for t, p, v, i in zip(
        wrong["label"], wrong["pred"], wrong["loss"], wrong["path"])],
        previews_of(inp, list(wrong["image_id"])))


def sample_grid(inp: Inputs, cache_dir: Path) -> bytes | str:
    """Two training images per class, as cached (texts: an HTML table of their start)."""
    classes = inp.model_meta["classes"]
    train_split = inp.split[inp.split["split"] == "train"].sort_values("image_id")
    samples = train_split.groupby("label", sort=False).head(2)
    samples = samples.assign(order=samples["label"].map(classes.index)).sort_values(
        ["order", "image_id"])
    if inp.cache.modality != "image":
        return cells_table(list(zip(samples["label"], samples["path"])),
                           previews_of(inp, list(samples["image_id"])))
    return image_grid(
        _thumbs_from_cache(cache_dir, "train", inp.cache.ids["train"],
                           list(samples["image_id"])),
        list(samples["label"]), columns=10, title="Two training images per class (as cached)")


def body(inp: Inputs, sections: dict[str, Any], pictures: dict[str, bytes],
         samples: bytes | str, changed: pd.DataFrame) -> list[str]:
    """The page's sections, in order (``changed``: the params that differ from the
    committed ones)."""
    data_cfg, meta, results = sections["data"], inp.model_meta, inp.results
    classes, split, plots, tm = meta["classes"], inp.split, inp.plots, inp.train_metrics
    versions = pd.DataFrame(sorted(meta["versions"].items()), columns=["library", "version"])
    items = plugins.noun(inp.cache.modality)
    return [
        "<h1>Fine-tuning report</h1>",
        f"<p class='muted'>{html.escape(meta['arch'])} on {len(split)} {items} in "
        f"{len(classes)} classes; test accuracy <b>{results['accuracy']:.4f}</b>.</p>",
        section("Dataset",
                f"<p>Source <code>{html.escape(data_cfg.source)}</code> at "
                f"<code>{html.escape(data_cfg.root)}</code>: {len(inp.clean)} {items} listed, "
                f"{len(split)} kept and split.</p>", table(split_counts(split, classes)),
                samples if isinstance(samples, str) else img_tag(samples, "samples")),
        section("What auto resolved to", *resolved_html(
            inp.clean_counts, inp.cache.image_size, inp.cache.image_size_reason,
            inp.split_metrics, meta.get("auto", []), text=inp.cache.text)),
        section("What clean found", facts({
            k: v for k, v in inp.clean_counts.items() if not k.startswith("near_duplicate_")}),
                *(issues_html(inp.clean, Path(data_cfg.root), modality=inp.cache.modality)
                  or ["<p>No issues found.</p>"])),
        section("Split", *split_html(sections["split"], sections["base"].seed,
                                     inp.split_metrics)),
        section("Model and weights", facts(model_table(meta).iloc[0].to_dict(), per_row=2)),
        section("Training schedule that ran", table(phases_table(meta), "{:.4g}"),
                f"<p>{tm['epochs']} epochs; the best validation accuracy "
                f"{tm['best_val_accuracy']:.4f} at epoch {tm['best_epoch']} became the "
                f"model.</p>",
                img_tag(training_figure(inp.curves, inp.lrs), "training curves")
                if inp.curves else ""),
        section("Test metrics", table(metric_rows(results, scaled_loss(inp))),
                "<h3>Per class</h3>", table(inp.per_class),
                img_tag(pictures["confusion"], "confusion matrix", 560),
                img_tag(pictures["reliability"], "reliability diagram", 480),
                img_tag(curves_figure(plots["roc"], "fpr", "tpr", "ROC, one vs rest",
                                      diagonal=True), "ROC curves", 480),
                img_tag(curves_figure(plots["pr"], "recall", "precision",
                                      "Precision-recall, one vs rest"), "PR curves", 480),
                img_tag(pictures["mistakes"], "worst mistakes")
                if inp.cache.modality == "image" else
                "<h3>Test mistakes with the highest loss</h3>" + mistakes_html(inp)),
        section(f"Params that differ from the committed {PARAMS_FILE}",
                table(changed) if len(changed) else "<p>None: the committed defaults.</p>"),
        section("Library versions", table(versions)),
        section("Provenance", table(provenance_table(meta))),
        section("Wall times", timings_html()),
    ]
