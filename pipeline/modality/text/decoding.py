"""Text files as items: decoding with the encoding recorded, never guessed silently; the
normalised form that exact-copy hashes use. Pure functions, no torch.

A text file is read as UTF-8 (with or without a byte-order mark); a UTF-16 file with its
mark is read as UTF-16; anything else is decoded as Windows-1252, or Latin-1 as the last
resort, and :func:`decode_text` says so in its note. Empty and whitespace-only files,
NUL bytes and mostly-control-character content are :class:`UnreadableText`, with the
reason as the message. Long texts are kept whole: truncation is the tokenizer's job.
"""

from __future__ import annotations

import codecs
import hashlib
import unicodedata
from collections import Counter
from pathlib import Path

from pipeline.modality import UnreadableItem

TEXT_SUFFIXES = (".txt", ".text")
FALLBACK_ENCODINGS = ("cp1252", "latin-1")  # latin-1 decodes any bytes: the last resort
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
CONTROL_LIMIT = 0.1  # share of control characters above which content is not text


class UnreadableText(UnreadableItem):
    """A file that holds no usable text (empty, whitespace only, binary)."""


def decode_text(data: bytes) -> tuple[str, str]:
    """(text, note) of a file's bytes; ``note`` says what was not plain UTF-8 ("" when it
    was). Raises :class:`UnreadableText` with the reason."""
    if not data:
        raise UnreadableText("empty file")
    if data.startswith(_UTF16_BOMS):
        text, note = data.decode("utf-16"), "UTF-16 with byte-order mark"
    elif (nul := data.find(b"\0")) >= 0:
        raise UnreadableText(f"NUL byte at offset {nul}: binary, not text")
    else:
        text, note = _decode_8bit(data)
    if not text.strip():
        raise UnreadableText("whitespace only")
    control = sum(unicodedata.category(c) == "Cc" and c not in "\t\n\r\f\v" for c in text)
    if control > CONTROL_LIMIT * len(text):
        raise UnreadableText(f"{control} control characters in {len(text)}: binary, not text")
    return text, note


def _decode_8bit(data: bytes) -> tuple[str, str]:
    bom = data.startswith(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8-sig"), "UTF-8 with byte-order mark" if bom else ""
    except UnicodeDecodeError as exc:
        where = exc.start
    for encoding in FALLBACK_ENCODINGS:
        try:
            return data.decode(encoding), (f"not UTF-8 (byte {where}): decoded as "
                                           f"{encoding}")
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def read_text(path: Path) -> tuple[str, str]:
    """(text, note) of a text file (:func:`decode_text`); an OSError is unreadable too."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableText(f"cannot read: {exc.strerror or exc}") from None
    return decode_text(data)


def normalise(text: str) -> str:
    """What exact copies share: Unicode NFKC, case folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_hash(text: str) -> str:
    """sha256 of the normalised text: equal for texts that differ only in case,
    whitespace, Unicode form or encoding."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


SCRIPT_LETTERS = 2000  # letters of a text looked at for its script
HAN = {"CJK", "HIRAGANA", "KATAKANA"}  # written together in Japanese: one script here


def dominant_script(text: str) -> str:
    """The script most of a text's first :data:`SCRIPT_LETTERS` letters are written in,
    by their Unicode names' first word (LATIN, CYRILLIC, GREEK, ARABIC, HANGUL; CJK for
    Han, hiragana and katakana); "" when it has no letters."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            word = unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0]
            counts["CJK" if word in HAN else word] += 1
            if sum(counts.values()) >= SCRIPT_LETTERS:
                break
    return counts.most_common(1)[0][0] if counts else ""
