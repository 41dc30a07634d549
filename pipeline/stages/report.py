"""report stage: one self-contained HTML page (and PNGs) from what the stages wrote.

Reads the manifests, metrics, curves, the model's metadata and cached thumbnails; it
recomputes nothing another stage computed. Writes ``reports/report.html`` (images
embedded, opens offline), ``reports/confusion.png``, ``reports/reliability.png`` and
``reports/mistakes.png``.
"""

from __future__ import annotations

import html
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

# The schemas of the sections the report shows (load_sections imports them by name):
# imported here so that dvc.yaml declares them (tests/test_dvc_yaml.py).
import pipeline.params.base  # noqa: F401
import pipeline.params.cache  # noqa: F401
import pipeline.params.clean  # noqa: F401
import pipeline.params.data  # noqa: F401
import pipeline.params.evaluate  # noqa: F401
import pipeline.params.model  # noqa: F401
import pipeline.params.split  # noqa: F401
import pipeline.params.train  # noqa: F401
from pipeline import paths
from pipeline.cachefiles import NpyRows, images_name, read_meta
from pipeline.config import PARAMS_FILE, as_dict, load_sections
from pipeline.errors import run_stage
from pipeline.images import UnreadableImage, decode_image, fit_image
from pipeline.manifest import read_manifest, resolve
from pipeline.pages import img_tag
from pipeline.report import (
    confusion_figure,
    curves_figure,
    image_grid,
    table,
    training_figure,
)

THUMB = 64  # pixels
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;margin-top:2em}
table.t{border-collapse:collapse;font-size:13px;margin:.5em 0}
table.t td,table.t th{border:1px solid #ddd;padding:3px 8px;text-align:right}
.muted{color:#666}code{background:#f3f3f3;padding:1px 4px}img{max-width:100%}"""
# Marks the page once every image has decoded: data-broken-images="0" when all load.
CHECK_IMAGES = """<script>window.addEventListener('load',function(){var b=0;
document.querySelectorAll('img').forEach(function(i){if(!i.complete||i.naturalWidth===0)b++;});
document.body.setAttribute('data-broken-images',String(b));
document.body.setAttribute('data-images',String(document.images.length));});</script>"""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def params_vs_committed(current: dict[str, Any]) -> pd.DataFrame:
    """Params that differ from params.yaml as committed at git HEAD (the defaults this
    run started from); empty when there is no git history to compare with."""
    try:
        committed = subprocess.run(["git", "show", f"HEAD:{PARAMS_FILE}"], capture_output=True,
                                   text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return pd.DataFrame(columns=["key", "committed", "this run"])
    old, new = _flat(yaml.safe_load(committed) or {}), _flat(current)
    keys = sorted(k for k in old.keys() | new.keys() if str(old.get(k)) != str(new.get(k)))
    return pd.DataFrame({"key": keys, "committed": [str(old.get(k, "")) for k in keys],
                         "this run": [str(new.get(k, "")) for k in keys]})


def _thumbs_from_cache(cache_dir: Path, split: str, ids: list[str], wanted: list[str]
                       ) -> list[np.ndarray]:
    rows = NpyRows(cache_dir / images_name(split))
    position = {image_id: i for i, image_id in enumerate(ids)}
    return list(rows[np.array([position[w] for w in wanted], dtype=np.int64)]) if wanted else []


def _section(title: str, *parts: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n" + "\n".join(parts)


def run(sections: dict[str, Any], out_dir: Path) -> Path:
    """Write the report and its PNGs; return the HTML path."""
    data_cfg = sections["data"]
    metrics_dir, cache_dir = paths.METRICS_DIR, paths.CACHE_DIR
    clean = read_manifest(paths.CLEAN)
    split = read_manifest(paths.SPLIT)
    cache_meta = read_meta(cache_dir)
    model_meta = torch.load(paths.MODEL, map_location="cpu", weights_only=True)["meta"]
    results = json.loads((metrics_dir / "eval.json").read_text())
    train_metrics = json.loads((metrics_dir / "train.json").read_text())
    clean_counts = json.loads((metrics_dir / "clean.json").read_text())
    split_metrics = json.loads((metrics_dir / "split.json").read_text())
    per_class = pd.read_csv(metrics_dir / "per_class.csv", dtype={"class": str})
    predictions = pd.read_csv(metrics_dir / "predictions.csv", dtype={"label": str, "pred": str})
    plots = {n: pd.read_csv(metrics_dir / "plots" / f"{n}.csv", dtype={"curve": str})
             for n in ("roc", "pr", "reliability")}
    curves_dir = paths.CURVES_DIR / "plots" / "metrics"
    curves = {p.stem: pd.read_csv(p, sep="\t") for p in sorted(curves_dir.glob("*.tsv"))}
    lrs = {p.stem: pd.read_csv(p, sep="\t") for p in sorted(curves_dir.glob("lr/*.tsv"))}
    classes = model_meta["classes"]
    out_dir.mkdir(parents=True, exist_ok=True)

    # --- pictures
    figures = {
        "confusion": confusion_figure(predictions["label"], predictions["pred"], classes),
        "reliability": curves_figure(plots["reliability"], "confidence", "accuracy",
                                     "Reliability diagram (test)", diagonal=True),
    }
    true_prob = predictions[[f"prob_{c}" for c in classes]].to_numpy()[
        np.arange(len(predictions)), predictions["label"].map(classes.index).to_numpy()]
    wrong = predictions.assign(loss=-np.log(np.clip(true_prob, 1e-12, 1)))
    wrong = wrong[wrong["label"] != wrong["pred"]].sort_values(["loss", "image_id"],
                                                               ascending=[False, True]).head(24)
    mistakes = _thumbs_from_cache(cache_dir, "test", cache_meta.ids["test"],
                                  list(wrong["image_id"]))
    figures["mistakes"] = image_grid(
        mistakes or [np.zeros((THUMB, THUMB, 3), np.uint8)],
        [f"{t} → {p}\nloss {v:.2f}" for t, p, v in zip(wrong["label"], wrong["pred"],
                                                        wrong["loss"])] or ["no mistakes"],
        title="Test mistakes with the highest loss")
    for name, data in figures.items():
        (out_dir / f"{name}.png").write_bytes(data)

    train_split = split[split["split"] == "train"].sort_values("image_id")
    samples = train_split.groupby("label", sort=False).head(2)
    samples = samples.assign(order=samples["label"].map(classes.index)).sort_values(
        ["order", "image_id"])
    sample_grid = image_grid(
        _thumbs_from_cache(cache_dir, "train", cache_meta.ids["train"],
                           list(samples["image_id"])),
        list(samples["label"]), columns=10, title="Two training images per class (as cached)")

    # --- what clean found, with thumbnails read from the source files
    issue_parts = []
    flagged = clean[clean["issues"] != ""]
    for issue in ("unreadable", "exact_duplicate", "near_duplicate", "conflicting_labels",
                  "label_issue", "outlier"):
        rows = flagged[flagged["issues"].str.split(";").map(lambda x, i=issue: i in x)]
        if rows.empty:
            continue
        head = rows.sort_values("image_id").head(16)
        listing = table(head[["path", "label", "keep", "cluster_id", "error"]])
        thumbs, captions = [], []
        for rel, label in zip(head["path"], head["label"]):
            try:
                pixels = decode_image(resolve(Path(data_cfg.root), rel), max_pixels=1 << 26)
                thumbs.append(fit_image(pixels, THUMB, fit="pad"))
                captions.append(f"{label}: {Path(rel).name[:18]}")
            except UnreadableImage:
                continue
        grid = img_tag(image_grid(thumbs, captions), issue) if thumbs else ""
        issue_parts.append(f"<h3>{issue}: {len(rows)} images, {int((~rows['keep']).sum())} "
                           f"dropped</h3>{listing}{grid}")

    counts = split.groupby(["label", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=classes, columns=["train", "val", "test"], fill_value=0)
    counts = counts.reset_index().rename(columns={"label": "class"})
    counts.columns.name = None
    leak_keys = {k: v for k, v in split_metrics.items() if k.startswith("leak")}

    ci = "{:.4f} [{:.4f}, {:.4f}]"
    metric_rows = [("accuracy (95 % CI)", ci.format(results["accuracy"],
                    results["accuracy_ci_low"], results["accuracy_ci_high"])),
                   ("macro-F1 (95 % CI)", ci.format(results["macro_f1"],
                    results["macro_f1_ci_low"], results["macro_f1_ci_high"]))]
    metric_rows += [(k, f"{v:.4f}" if isinstance(v, float) else str(v))
                    for k, v in results.items()
                    if not k.startswith(("accuracy", "macro_f1"))]
    phases = pd.DataFrame(model_meta["params"]["train"]["phases"])
    phases.insert(0, "phase", range(len(phases)))
    phases["lr"] = phases["lr_mult"] * model_meta["params"]["train"]["lr"]  # the head's
    for key in ("seconds", "images_per_second"):
        phases[key] = [train_metrics.get(f"phase{i}_{key}") for i in phases["phase"]]
    pretrained = model_meta["pretrained"]
    versions = pd.DataFrame(sorted(model_meta["versions"].items()), columns=["library",
                                                                              "version"])
    current = yaml.safe_load(PARAMS_FILE.read_text())
    changed = params_vs_committed(current)

    body = [
        "<h1>Fine-tuning report</h1>",
        f"<p class='muted'>{html.escape(model_meta['arch'])} on {len(split)} images in "
        f"{len(classes)} classes; test accuracy <b>{results['accuracy']:.4f}</b>.</p>",
        _section("Dataset",
                 f"<p>Source <code>{html.escape(data_cfg.source)}</code> at "
                 f"<code>{html.escape(data_cfg.root)}</code>: {len(clean)} images listed, "
                 f"{len(split)} kept and split.</p>", table(counts),
                 img_tag(sample_grid, "samples")),
        _section("What clean found",
                 table(pd.DataFrame([clean_counts])),
                 *(issue_parts or ["<p>No issues found.</p>"])),
        _section("Split",
                 f"<p>Method <code>{html.escape(sections['split'].method)}</code>, fractions "
                 f"{html.escape(json.dumps(as_dict(sections['split'].fractions)))}, seed "
                 f"{sections['base'].seed}. Duplicate clusters are kept inside one split.</p>",
                 table(pd.DataFrame([leak_keys])) if leak_keys else
                 "<p>Leakage audit: not run by this version of the split stage.</p>"),
        _section("Model and weights",
                 table(pd.DataFrame([{"library": model_meta["library"],
                                      "architecture": model_meta["arch"],
                                      "weights": pretrained["weights"],
                                      "sha256": pretrained.get("sha256", ""),
                                      "image size": model_meta["preprocessing"]["image_size"],
                                      "mean": str(model_meta["preprocessing"]["mean"]),
                                      "std": str(model_meta["preprocessing"]["std"])}]))),
        _section("Training schedule that ran",
                 table(phases, "{:.4g}"),
                 f"<p>{train_metrics['epochs']} epochs; the best validation accuracy "
                 f"{train_metrics['best_val_accuracy']:.4f} at epoch "
                 f"{train_metrics['best_epoch']} became the model.</p>",
                 img_tag(training_figure(curves, lrs), "training curves") if curves else ""),
        _section("Test metrics",
                 table(pd.DataFrame(metric_rows, columns=["metric", "value"])),
                 "<h3>Per class</h3>", table(per_class),
                 img_tag(figures["confusion"], "confusion matrix", 560),
                 img_tag(figures["reliability"], "reliability diagram", 480),
                 img_tag(curves_figure(plots["roc"], "fpr", "tpr", "ROC, one vs rest",
                                       diagonal=True), "ROC curves", 480),
                 img_tag(curves_figure(plots["pr"], "recall", "precision",
                                       "Precision-recall, one vs rest"), "PR curves", 480),
                 img_tag(figures["mistakes"], "worst mistakes")),
        _section("Params that differ from the committed params.yaml",
                 table(changed) if len(changed) else "<p>None: the committed defaults.</p>"),
        _section("Library versions", table(versions)),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Fine-tuning report"
            f"</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) +
            f"\n{CHECK_IMAGES}</body></html>\n")
    target = out_dir / "report.html"
    target.write_text(page)
    print(f"report: {target} ({len(page) / 1024:.0f} KiB)")
    return target


def main() -> None:
    """Entry point of the DVC stage."""
    # all sections: the report lists every param that differs from the committed ones
    names = ("base", "data", "clean", "split", "cache", "model", "train", "evaluate")
    sections = dict(zip(names, load_sections("base", "data", "clean", "split", "cache",
                                             "model", "train", "evaluate")))
    run(sections, Path("reports"))


if __name__ == "__main__":
    run_stage("report", main)
