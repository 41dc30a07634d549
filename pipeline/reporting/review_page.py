"""clean's review page: thumbnails of what the detectors flagged, grouped by issue,
most suspicious first (self-contained HTML, opens offline)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline.contracts.manifest import resolve
from pipeline.reporting.pages import SNIPPET_STYLE, preview_tag

# Tiles of a fixed width: a long file name is cut with an ellipsis (the full name is its
# title); thumbnails of tiny images (8x8 digits) are enlarged to at least MIN_DISPLAY
# pixels, pixelated rather than blurred.
MIN_DISPLAY = 96  # CSS pixels
STYLE = ("body{font-family:sans-serif}figure{display:inline-block;margin:4px;width:150px;"
         "font-size:11px;vertical-align:top}figcaption span{display:block;overflow:hidden;"
         "text-overflow:ellipsis;white-space:nowrap}"
         f"figure img{{min-width:{MIN_DISPLAY}px;min-height:{MIN_DISPLAY}px;"
         "object-fit:contain;image-rendering:pixelated}")


def _line(text: str) -> str:
    """One caption line, cut to the tile's width, the whole text in its title."""
    return f'<span title="{html.escape(text)}">{html.escape(text)}</span>'


def review_page(review: pd.DataFrame, root: Path, *, actions: str,
                notes: Sequence[str] = (), limit: int = 200, modality: str = "image",
                texts: Mapping[str, str] | None = None) -> str:
    """An offline HTML page of thumbnails (texts: their start) grouped by issue (the
    first ``limit`` of each), from the review list, after ``notes`` (what the data
    leaves out without an issue: empty class folders, frames); ``texts``: image id ->
    text, for texts given inline."""
    texts = texts or {}
    style, items = ((STYLE + SNIPPET_STYLE, "Texts") if modality == "text" else
                    (STYLE, "Images") if modality == "image" else (STYLE, "Items"))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>clean review</title>"
             f"<style>{style}</style></head><body>",
             f"<h1>{items} to review</h1><p>Record verdicts in data/review/decisions.csv "
             f"(image_id,action: {html.escape(actions)}); the next dvc repro applies them.</p>"]
    if notes:
        parts.append(f"<h2>Notes ({len(notes)})</h2><ul>" + "".join(
            f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
    bar = tqdm(total=len(review.groupby("issue", sort=False).head(limit)), desc="review page",
               mininterval=1.0, leave=False)
    for issue, rows in review.groupby("issue", sort=False):
        more = f", the first {limit} (all in review.csv)" if len(rows) > limit else ""
        parts.append(f"<h2>{html.escape(str(issue))} ({len(rows)}{more})</h2>")
        for row in rows.head(limit).itertuples():
            picture = preview_tag(resolve(root, row.path), row.image_id, modality=modality,
                                  text=texts.get(row.image_id))
            bar.update()
            suggestion = f" → {row.suggested_label}" if row.suggested_label else ""
            parts.append(f"<figure>{picture}<figcaption>{_line(row.image_id)}"
                         f"{_line(row.path)}{_line(f'label {row.label}{suggestion}')}"
                         f"score {row.score:.3f}</figcaption></figure>")
    bar.close()
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
