"""split's leakage page: the leaking pairs side by side as thumbnails, grouped by kind
(self-contained HTML, opens offline)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipeline.contracts.manifest import resolve
from pipeline.reporting.pages import SNIPPET_STYLE, preview_tag
from pipeline.splitting.leakage import KINDS


def leakage_page(pairs: pd.DataFrame, root: Path, *, summary: list[str],
                 limit: int = 200, modality: str = "image",
                 texts: Mapping[str, str] | None = None) -> str:
    """An offline HTML page of the leaking pairs, side by side, grouped by kind (texts:
    their start; ``texts``: image id -> text, for texts given inline)."""
    texts = texts or {}

    def preview(rel: str, image_id: str) -> str:
        return preview_tag(resolve(root, rel), image_id, modality=modality,
                           text=texts.get(image_id))

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>split leakage</title>"
             "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
             "td{border:1px solid #ddd;padding:4px;vertical-align:top;font-size:12px}" +
             (SNIPPET_STYLE if modality == "text" else "") +
             "</style></head><body>", "<h1>Leakage audit of the split</h1>",
             "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in summary) + "</ul>"]
    if pairs.empty:
        parts.append("<p><b>No leakage found.</b></p>")
    for kind in KINDS:
        rows = pairs[pairs["kind"] == kind]
        if rows.empty:
            continue
        shown = f", the first {limit} (all in leakage.csv)" if len(rows) > limit else ""
        parts.append(f"<h2>{html.escape(kind)} ({len(rows)}{shown})</h2><table>"
                     "<tr><th>val/test image</th><th>train image</th><th>details</th></tr>")
        for row in rows.head(limit).itertuples():
            left = preview(row.path, row.image_id)
            right = preview(row.train_path, row.train_image_id) if row.train_path else ""
            similarity = ("" if pd.isna(row.similarity)
                          else f"similarity {row.similarity:.4f}<br>")
            train = (f"train: {html.escape(row.train_path)} ({html.escape(row.train_image_id)}),"
                     f" label {html.escape(row.train_label)}<br>" if row.train_path else "")
            parts.append(f"<tr><td>{left}</td><td>{right}</td><td>{similarity}"
                         f"{html.escape(row.split)}: {html.escape(row.path)} "
                         f"({html.escape(row.image_id)}), label {html.escape(row.label)}<br>"
                         f"{train}{html.escape(row.detail)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
