"""Fault corpus, texts: every bad text input stops with one message naming its cause, or
is recorded with its reason (unreadable) or note (an encoding that was not UTF-8), and no
source file changes. Each case writes its files under ``tmp_path/src``, runs prepare and
the embed stage's text pass (a tiny encoder) with outputs under ``tmp_path/out``, and
returns what a user would read. ``{src}`` in the expected text is that folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.contracts.embedfiles import read_meta
from pipeline.contracts.manifest import read_manifest
from pipeline.core.config import parse_sections
from pipeline.stages import embed, prepare

from . import test_text_modality as texts
from .conftest import fault_outcome, repo_params, tree_hash

tokenizer = texts.tokenizer  # the module-scoped fixtures of the text tests, reused
tiny_encoder = texts.tiny_encoder

GOOD = {"news/a.txt": b"Shares rose on the market today.", "news/b.txt": b"Banks cut rates.",
        "sport/c.txt": b"The team won the cup final.", "sport/d.txt": b"A late goal won it."}
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")


def _files(src: Path, files: dict[str, bytes]) -> Path:
    root = src / "texts"
    for rel, data in {**GOOD, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _outcome(src: Path, out: Path, encoder: Path, data_overrides: dict) -> str:
    """prepare and embed's text pass; each row that is not plain: its reason or note."""
    params = repo_params(**{"data.source": "folder", "embed.model": str(encoder),
                            "embed.batch_size": 4, "embed.calibration_sample": 2,
                            **data_overrides})
    data, cfg = parse_sections(params, "data", "embed")
    prepare.run(data, out / "prepared.csv", ignore=out / ".dvcignore")
    df = read_manifest(out / "prepared.csv")
    embed.run_texts(data, cfg, df, out / "embed", device="cpu")
    meta = read_meta(out / "embed")
    said = [f"{p}: unreadable: {e}" if e else f"{p}: {n}" if n else
            f"{p}: {length:,} characters" if length > 1000 else ""
            for p, e, n, length in zip(df["path"], meta.error, meta.notes, meta.lengths)]
    return "; ".join(s for s in said if s) or "all plain"


def _folder(files: dict[str, bytes], **overrides) -> Callable[[Path, Path, Path], str]:
    def run(src: Path, out: Path, encoder: Path) -> str:
        return _outcome(src, out, encoder, {"data.root": str(_files(src, files)), **overrides})
    return run


def _manifest(name: str, content: str, **overrides) -> Callable[[Path, Path, Path], str]:
    def run(src: Path, out: Path, encoder: Path) -> str:
        (src / name).write_text(content, encoding="utf-8")
        return _outcome(src, out, encoder, {"data.source": "csv", "data.root": str(src),
                                            "data.manifest": str(src / name), **overrides})
    return run


# name -> (run(src, out, encoder) -> outcome, expected outcome)
CASES: dict[str, tuple[Callable[[Path, Path, Path], str], str]] = {
    "empty_file": (_folder({"news/e.txt": b""}), "news/e.txt: unreadable: empty file"),
    "whitespace_only": (_folder({"news/w.txt": b" \n\t \r\n"}),
                        "news/w.txt: unreadable: whitespace only"),
    "utf8_bom": (_folder({"news/bom.txt": b"\xef\xbb\xbfCaf\xc3\xa9 prices rose."}),
                 "news/bom.txt: UTF-8 with byte-order mark"),
    "latin1": (_folder({"news/l1.txt": "Café prices rose by £5.".encode("latin-1")}),
               "news/l1.txt: not UTF-8 (byte 3): decoded as cp1252"),
    "nul_bytes": (_folder({"news/nul.txt": b"Shares\x00rose"}),
                  "news/nul.txt: unreadable: NUL byte at offset 6: binary, not text"),
    "binary_file": (_folder({"news/pic.txt": PNG}),
                    "news/pic.txt: unreadable: NUL byte at offset 8: binary, not text"),
    "ten_mb_text": (_folder({"news/long.txt": b"Markets moved again today. " * 388_000}),
                    "news/long.txt: 10,476,000 characters"),
    "image_in_a_text_project": (
        _folder({"news/photo.png": PNG}, **{"data.modality": "text"}),
        "news/photo.png: unreadable: NUL byte at offset 8: binary, not text"),
    "folder_mixing_images_and_texts": (
        _folder({"news/p1.png": PNG, "sport/p2.png": PNG, "sport/p3.png": PNG}),
        "the source mixes 4 text files (.txt, .text) and 3 images: set data.modality to "
        "text or image (the other kind then become unreadable rows), or separate them"),
    "one_class": (
        _manifest("m.csv", "text,label\nShares rose.,news\nBanks cut rates.,news\n"),
        "data.manifest = '{src}/m.csv': only class 'news' (2 texts); a classifier needs "
        "texts of at least two classes"),
    "missing_label": (
        _manifest("m.csv", "text,label\nShares rose.,news\nA goal.,\nThe cup.,sport\n"),
        "{src}/m.csv: row(s) 3 have an empty text or label"),
    "csv_with_quoted_newlines": (
        _manifest("m.csv", 'text,label\n"Shares rose.\nBanks, too, ""cut"" rates.",news\n'
                           '"The team\nwon.",sport\n'),
        "all plain"),
    "duplicate_ids": (
        _manifest("m.jsonl", '{"id": "t1", "text": "Shares rose.", "label": "news"}\n'
                             '{"id": "t1", "text": "A late goal.", "label": "sport"}\n'),
        "{src}/m.jsonl: id 't1' is given to more than one row (rows 1, 2); ids must be "
        "unique, or leave the column out"),
    "jsonl_line_not_json": (
        _manifest("m.jsonl", '{"text": "Shares rose.", "label": "news"}\n{"text": oops}\n'),
        "{src}/m.jsonl: line 2 is not JSON (Expecting value)"),
    "text_and_path_columns": (
        _manifest("m.csv", "path,text,label\na.txt,Shares rose.,news\n"),
        "{src}/m.csv has both a text and a path column: give the texts inline (text) or as "
        "files (path), not both"),
    "empty_inline_text": (
        _manifest("m.csv", "text,label\nShares rose.,news\n,news\nA goal.,sport\n"),
        "m.csv#2: unreadable: empty file"),
    "image_modality_for_inline_texts": (
        _manifest("m.csv", "text,label\nShares rose.,news\nA goal.,sport\n",
                  **{"data.modality": "image"}),
        "data.modality = image, but the manifest gives texts (a text column): set "
        "data.modality: text or auto"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_text_fault(case, tmp_path, monkeypatch, tiny_encoder):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    monkeypatch.chdir(tmp_path)  # nothing may land in the repo's data/
    run, expected = CASES[case]
    outcome = fault_outcome(run, src, out, tiny_encoder)
    assert outcome == expected.format(src=src), f"\n got: {outcome}\nwant: {expected}"
    assert "\n" not in outcome  # one line
    before = tree_hash(src)
    # the same inputs again: the same outcome, and still no source file changed
    assert fault_outcome(run, src, out, tiny_encoder) == outcome and tree_hash(src) == before


def test_quoted_newlines_survive_into_the_manifest_the_stages_read(tmp_path, monkeypatch,
                                                                   tiny_encoder):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    CASES["csv_with_quoted_newlines"][0](tmp_path / "src", tmp_path, tiny_encoder)
    df = read_manifest(tmp_path / "prepared.csv")
    assert sorted(df["text"]) == ['Shares rose.\nBanks, too, "cut" rates.', "The team\nwon."]
    assert sorted(df["path"]) == ["m.csv#1", "m.csv#2"]  # data rows, as predict names them
    meta = json.loads((tmp_path / "embed" / "meta.json").read_text())
    assert meta["modality"] == "text" and meta["signals"] == ["embedding", "shingles"]


def test_embed_records_each_texts_script_for_the_outlier_rule(tmp_path, monkeypatch,
                                                              tiny_encoder):
    monkeypatch.chdir(tmp_path)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _folder({"news/ru.txt": "Акции банков выросли сегодня.".encode()})(src, out, tiny_encoder)
    df = read_manifest(out / "prepared.csv")
    scripts = dict(zip(df["path"], read_meta(out / "embed").scripts))
    assert scripts.pop("news/ru.txt") == "CYRILLIC"
    assert set(scripts.values()) == {"LATIN"}
