"""The CSV files of ours that hold labels and leave the pipeline for people and tools: the
prediction tables (``metrics/predictions.csv``, ``predictions_val.csv``, the ensembles'
tables), the per-class scores, the curve tables under ``metrics/plots/`` and clean's
review list. They are written and read here only.

Labels are the user's own text, and two readers run text (issue 26):

- a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a
  carriage return as a formula (OWASP, "CSV Injection"): such a cell gets a leading
  ``'``, as OWASP advises, unless it is a plain number (``-1`` is a label, no formula);
  a cell that starts with ``'`` of its own gets one more, so the step reverses;
- ``dvc plots show`` copies every field of a plot file, unescaped, into a ``<script>``
  block of its page, so a label ``</script><script>...`` would run there: in the
  prediction, per-class and curve tables ``&``, ``<`` and ``>`` are written as ``&amp;``,
  ``&lt;`` and ``&gt;`` (first, then the spreadsheet step), and a carriage return as
  ``&#13;`` (Python's csv writer leaves a field holding one unquoted, and pandas and
  spreadsheets would end the row there).

Labels of the demo's kind (letters, digits, ``_``, spaces) are written as they are.

The prediction tables write the same text for a class in the ``label`` and ``pred``
cells and in the name of its ``prob_<class>`` column, so every metric is recomputable
from the file as written, without decoding anything: compare ``label`` with ``pred``, and
take a row's probability of its label from column ``"prob_" + label``. Only the true
class names need :func:`from_plot_cell` (``read_predictions`` applies it to every text
cell and ``prob_`` column name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.files import write_csv

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"
# a cell that is only a number is no formula, whatever its sign
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# the text columns of a prediction table; the others are probabilities
PREDICTION_TEXT = ("image_id", "path", "label", "pred", "tta_pred")
PROB_PREFIXES = ("tta_prob_", "prob_")  # the longer first: prob_ is a suffix of tta_prob_


def spreadsheet_cell(text: str) -> str:
    """``text`` as a cell no spreadsheet runs as a formula (see the module docstring)."""
    if text.startswith((*FORMULA_START, QUOTE)) and not NUMBER.fullmatch(text):
        return QUOTE + text
    return text


def from_spreadsheet_cell(cell: str) -> str:
    """The text :func:`spreadsheet_cell` made ``cell`` from."""
    return cell[1:] if cell.startswith(QUOTE) else cell


def plot_cell(text: str) -> str:
    """``text`` as a cell of a file DVC draws and spreadsheets open: ``&``, ``<``, ``>``
    and a carriage return as HTML entities, then :func:`spreadsheet_cell`."""
    return spreadsheet_cell(text.replace("&", "&amp;").replace("<", "&lt;")
                            .replace(">", "&gt;").replace("\r", "&#13;"))


def from_plot_cell(cell: str) -> str:
    """The text :func:`plot_cell` made ``cell`` from (every ``&`` in a cell starts one of
    the four entities, so the order of the replacements is safe)."""
    text = from_spreadsheet_cell(cell)
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&#13;", "\r")
            .replace("&amp;", "&"))


def for_spreadsheet(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """A copy of ``frame`` with the text ``columns`` (those present) passed through
    :func:`spreadsheet_cell`: a list a person opens, such as clean's review.csv."""
    out = frame.copy()
    for column in (c for c in columns if c in out):
        out[column] = [spreadsheet_cell(str(v)) for v in out[column]]
    return out


def _prob_column(name: str, code: Callable[[str], str]) -> str:
    """``name`` with the class part of a ``prob_``/``tta_prob_`` column passed through
    ``code``; other names as they are."""
    for prefix in PROB_PREFIXES:
        if name.startswith(prefix):
            return prefix + code(name[len(prefix):])
    return name


def write_labelled(frame: pd.DataFrame, path: Path, text: Sequence[str], *,
                   float_format: str) -> None:
    """Write a table whose ``text`` columns hold labels (see the module docstring), every
    float with ``float_format``, Unix newlines, renamed into place."""
    out = frame.copy()
    for column in (c for c in text if c in out):
        out[column] = [plot_cell(str(v)) for v in out[column]]
    write_csv(out, path, float_format=float_format)


def read_labelled(path: Path, text: Sequence[str]) -> pd.DataFrame:
    """A table :func:`write_labelled` wrote: the ``text`` columns as the labels they
    were (never pandas' missing values: ``NA``, ``null``, ``None`` and ``nan`` are class
    names), the other columns parsed as pandas does."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run the stage that writes it first "
                            f"(dvc repro)")
    # an empty cell of another column is a missing number (pandas writes NaN so); a
    # converter cannot keep text whole: pandas 3 turns "NA" into NaN before it
    # lines end in "\n" only (write_csv): a carriage return is data, never a line end
    header = pd.read_csv(path, nrows=0, lineterminator="\n").columns
    numbers = {c: [""] for c in header if c not in text}
    frame = pd.read_csv(path, dtype=dict.fromkeys(text, str), keep_default_na=False,
                        na_values=numbers, lineterminator="\n")
    for column in (c for c in text if c in frame):
        frame[column] = [from_plot_cell(v) for v in frame[column]]
    return frame


def write_predictions(table: pd.DataFrame, path: Path) -> None:
    """Write a prediction table (image_id, path, label, pred, one ``prob_<class>`` column
    per class, optionally tta_pred and tta_prob_*), probabilities to 8 significant
    digits."""
    out = table.rename(columns=lambda name: _prob_column(name, plot_cell))
    write_labelled(out, path, PREDICTION_TEXT, float_format="%.8g")


def read_predictions(path: Path) -> pd.DataFrame:
    """A prediction table as :func:`write_predictions` was given it: text cells and the
    class names of the ``prob_`` columns as they were, probabilities as floats."""
    table = read_labelled(path, PREDICTION_TEXT)
    return table.rename(columns=lambda name: _prob_column(name, from_plot_cell))


def prediction_arrays(table: pd.DataFrame, classes: Sequence[str], prefix: str = ""
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(N,) label indices (in ``classes`` order) and (N, C) probabilities of a prediction
    table as :func:`read_predictions` returns it; ``prefix`` ``tta_`` for the test-time
    augmented probabilities."""
    index = {c: i for i, c in enumerate(classes)}
    labels = table["label"].map(index).to_numpy()
    probs = table[[f"{prefix}prob_{c}" for c in classes]].to_numpy(dtype=float)
    return labels, probs


def prediction_classes(table: pd.DataFrame) -> list[str]:
    """The classes, in the model's order, from a prediction table's ``prob_`` columns."""
    return [c.removeprefix("prob_") for c in table.columns if c.startswith("prob_")]
