"""clean's review page: thumbnails of what the detectors flagged, grouped by issue,
most suspicious first (self-contained HTML, opens offline)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipeline.manifest import resolve
from pipeline.pages import thumbnail_tag


def review_page(review: pd.DataFrame, root: Path, *, actions: str,
                notes: Sequence[str] = ()) -> str:
    """An offline HTML page of thumbnails grouped by issue, from the review list, after
    ``notes`` (what the data leaves out without an issue: empty class folders, frames)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>clean review</title>"
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:4px;"
             "width:150px;font-size:11px;vertical-align:top}</style></head><body>",
             "<h1>Images to review</h1><p>Record verdicts in data/review/decisions.csv "
             f"(image_id,action: {actions}); the next dvc repro applies them.</p>"]
    if notes:
        parts.append(f"<h2>Notes ({len(notes)})</h2><ul>" + "".join(
            f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    for issue, rows in review.groupby("issue", sort=False):
        parts.append(f"<h2>{html.escape(str(issue))} ({len(rows)})</h2>")
        for row in rows.head(200).itertuples():
            picture = thumbnail_tag(resolve(root, row.path), row.image_id)
            suggestion = f" → {html.escape(row.suggested_label)}" if row.suggested_label else ""
            parts.append(f"<figure>{picture}<figcaption>{html.escape(row.image_id)}<br>"
                         f"{html.escape(row.path)}<br>label {html.escape(row.label)}"
                         f"{suggestion}, score {row.score:.3f}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
