"""The text near-copy signal (hashed word shingles) and the synthetic text copies that
calibrate it: unit rows, normalisation-blind equality, no collision bias between unrelated
texts, the Ochiai estimate, and copies that are realistic, deterministic and near their
source (tiny texts written here, so the tests stay fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.modality.text.signals import (
    SIGNATURES,
    TEXT_COPY_KINDS,
    make_text_copies,
    shingle_vectors,
    words_of,
)

REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "The city council voted on Tuesday to expand the bus network. Three new routes will "
    "link the northern suburbs with the hospital, the university and the old harbour. "
    "Fares stay the same for now, the transport committee said, although a review is "
    "planned for next spring. Critics argue the plan ignores cyclists.",
    "Our new espresso machine heats up in under a minute and froths milk at the press of "
    "a button. The water tank holds two litres, enough for a busy office. Descaling is "
    "automatic, and a small display tells you when the beans run low. It ships with a "
    "two year warranty.",
    "Researchers have mapped the migration of arctic terns using tiny geolocators. Some "
    "birds flew more than ninety thousand kilometres in a single year, following winds "
    "rather than the shortest route. The team hopes the data will help protect feeding "
    "grounds in the southern ocean.",
    "Dear customer, your parcel could not be delivered because nobody was at home. You "
    "can rebook a delivery slot online or collect the parcel from the depot within seven "
    "days. Please bring a photo identity document and this card with you.",
    "In the final minute the striker curled a free kick over the wall and into the top "
    "corner, sealing a dramatic comeback. The visitors had led by two goals at half time, "
    "but tired badly after the break. Their coach refused to blame the referee.",
]


def _random_text(rng: np.random.Generator, vocabulary: list[str], n_words: int) -> str:
    return " ".join(rng.choice(vocabulary, size=n_words).tolist())


def _vocabulary(prefix: str, size: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(size)]


# ----------------------------------------------------------------------------- shingles


def test_rows_are_unit_or_zero_float32_and_wordless_texts_give_zero_rows():
    texts = [*TEXTS, "", "   \n", "!!! ... ---", "ok", "two words"]
    v = shingle_vectors(texts)
    assert v.shape == (len(texts), 2048) and v.dtype == np.float32
    norms = np.linalg.norm(v, axis=1)
    assert np.allclose(norms[:len(TEXTS)], 1, atol=1e-5)
    assert np.allclose(norms[-2:], 1, atol=1e-5)
    assert not v[len(TEXTS):len(TEXTS) + 3].any()  # no words: matches nothing
    assert shingle_vectors([]).shape == (0, 2048)
    assert shingle_vectors(TEXTS[:2], dim=64, n=2).shape == (2, 64)


def test_identical_texts_and_case_punctuation_whitespace_variants_give_the_same_row():
    base = "It's the end of the line, said Mr. O'Brien -- twice!"
    variants = [base, "its THE end of the line said mr obrien twice",
                "  It\u2019s   the END\nof the line;   said Mr O'Brien... twice  ",
                "\uff29\uff54's the end of the line, said Mr. O'Brien -- twice!"]  # fullwidth
    v = shingle_vectors(variants + [TEXTS[0], TEXTS[0]])
    assert np.array_equal(v[0], v[1]) and np.array_equal(v[0], v[2])
    assert np.array_equal(v[0], v[3])
    assert v[-2] @ v[-1] == pytest.approx(1, abs=1e-5)
    assert words_of(variants[2]) == words_of(base)


def test_the_ascii_fast_path_gives_the_same_words_as_the_unicode_one():
    ascii_text = "Don't stop-me now_ok: 50% (e.g. a+b) U.S.A. x2\ttab"
    words = words_of(ascii_text + " \u00e9t\u00e9")  # the accents take the regex path
    assert words[:-1] == words_of(ascii_text)
    assert words == [b"dont", b"stop", b"me", b"now", b"ok", b"50", b"e", b"g", b"a", b"b",
                     b"u", b"s", b"a", b"x2", b"tab", "\u00e9t\u00e9".encode()]


def test_unrelated_texts_sit_near_zero_without_a_positive_collision_bias():
    rng = np.random.default_rng(1)
    texts = [_random_text(rng, _vocabulary(f"w{i}x", 300), 200) for i in range(40)]
    v = shingle_vectors(texts)  # no word shared between any two texts
    sims = (v @ v.T)[np.triu_indices(len(texts), 1)]
    assert abs(sims.mean()) < 0.01  # unsigned hashing would sit near +0.4 here
    assert np.abs(sims).max() < 0.12
    unrelated = shingle_vectors(TEXTS)
    off = (unrelated @ unrelated.T)[np.triu_indices(len(TEXTS), 1)]
    assert np.abs(off).max() < 0.35  # only stop words ("the", "a") in common


def test_the_dot_product_estimates_the_ochiai_coefficient_of_the_shingle_sets():
    a = _vocabulary("a", 200)
    b = a[:100] + _vocabulary("b", 100)  # 100 of 200 words, 98 of 198 word triples shared
    v3 = shingle_vectors([" ".join(a), " ".join(b)], n=3)
    v1 = shingle_vectors([" ".join(a), " ".join(b)], n=1)
    mixed = shingle_vectors([" ".join(a), " ".join(b)])
    assert v3[0] @ v3[1] == pytest.approx(98 / 198, abs=0.06)
    assert v1[0] @ v1[1] == pytest.approx(0.5, abs=0.06)
    assert mixed[0] @ mixed[1] == pytest.approx((0.5 + 98 / 198) / 2, abs=0.06)


def test_shingles_are_a_set_and_ordered():
    v = shingle_vectors(["a b c a b c", "a b c a b c a b c", "c b a c b a c b a"], n=3)
    assert v[0] @ v[1] == pytest.approx(1, abs=1e-5)  # same set {abc, bca, cab}
    assert abs(v[0] @ v[2]) < 0.3  # the reversed triples are other shingles


def test_short_texts_use_their_words_and_sizes_never_match_each_other():
    v = shingle_vectors(["hello world", "world hello", "hello", "goodbye", "hello world"
                         " again"], n=3)
    assert v[0] @ v[1] == pytest.approx(1, abs=1e-5)  # under 3 words: the set of words
    assert v[0] @ v[2] == pytest.approx(1 / np.sqrt(2), abs=0.1)
    assert abs(v[2] @ v[3]) < 0.3
    assert abs(v[0] @ v[4]) < 0.3  # words of a short text vs triples of a longer one


def test_rows_do_not_depend_on_the_python_hash_seed():
    code = ("import hashlib, sys; from pipeline.modality.text.signals import shingle_vectors; "
            "sys.stdout.write(hashlib.sha256(shingle_vectors(sys.argv[1:]).tobytes())"
            ".hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, *TEXTS[:2], "x y"], cwd=REPO,
                              env={"PYTHONHASHSEED": seed}, capture_output=True, text=True,
                              check=True).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1


# ----------------------------------------------------------------------------- copies


def test_copies_are_text_major_with_their_source_and_kind():
    copies, source, kinds = make_text_copies(TEXTS[:2])
    assert len(copies) == 2 * len(TEXT_COPY_KINDS)
    assert source.dtype == np.int64 and source.tolist() == [0] * 7 + [1] * 7
    assert kinds.dtype == object and kinds.tolist() == list(TEXT_COPY_KINDS) * 2
    sub, src, names = make_text_copies(TEXTS[:2], kinds=("truncate",))
    assert len(sub) == 2 and names.tolist() == ["truncate"] * 2 and src.tolist() == [0, 1]
    with pytest.raises(ValueError, match="unknown copy kinds"):
        make_text_copies(TEXTS, kinds=("jpeg",))


def test_every_copy_is_nearer_its_source_than_any_other_text():
    copies, source, kinds = make_text_copies(TEXTS, seed=3)
    sims = shingle_vectors(copies) @ shingle_vectors(TEXTS).T
    for m, (own, kind) in enumerate(zip(source, kinds)):
        others = np.delete(sims[m], own)
        assert sims[m, own] > others.max() + 0.3, (kind, copies[m])
        assert copies[m] != TEXTS[own], kind


def test_each_kind_edits_as_described():
    text = " ".join(_vocabulary("w", 100)) + "."
    words = text.split()
    for seed in range(5):
        copy = dict(zip(TEXT_COPY_KINDS, make_text_copies([text], seed=seed)[0]))
        assert 90 <= len(copy["drop_words"].split()) <= 95
        assert set(copy["drop_words"].split()) < set(words)
        swapped = copy["swap_words"].split()
        assert Counter(swapped) == Counter(words)
        assert 4 <= sum(a != b for a, b in zip(swapped, words)) <= 10
        kept = copy["truncate"].split()
        assert kept == words[:len(kept)] and 70 <= len(kept) <= 90
        assert copy["signature"].startswith(text + "\n\n")
        assert copy["signature"][len(text) + 2:] in SIGNATURES
        assert words_of(copy["case_punct"]) == words_of(text)
        assert sum(a != b for a, b in zip(copy["case_punct"].split(), words)) >= 5
    text = "One is here. Two is there! Three is everywhere? Four is done."
    for seed in range(5):
        reordered = make_text_copies([text], kinds=("reorder_sentences",), seed=seed)[0][0]
        parts = re.split(r"(?<=[.!?]) ", reordered)
        assert reordered != text and sorted(parts) == sorted(re.split(r"(?<=[.!?]) ", text))
    one = make_text_copies(["First this, then that; finally the rest"],
                           kinds=("reorder_sentences",))[0][0]
    assert one in ("then that; finally the rest First this,", "finally the rest First this, "
                   "then that;")


def test_copies_are_deterministic_for_a_seed():
    first = make_text_copies(TEXTS, seed=7)
    again = make_text_copies(TEXTS, seed=7)
    other = make_text_copies(TEXTS, seed=8)
    assert first[0] == again[0]
    assert np.array_equal(first[1], again[1]) and np.array_equal(first[2], again[2])
    assert first[0] != other[0]
    assert shingle_vectors(first[0]).tobytes() == shingle_vectors(again[0]).tobytes()


def test_very_short_texts_still_give_non_empty_copies():
    short = ["ok", "two words", "three little words", "Hi!", "a, b; c"]
    copies, source, kinds = make_text_copies(short, seed=0)
    assert all(c.strip() for c in copies)
    v, originals = shingle_vectors(copies), shingle_vectors(short)
    sims = np.einsum("md,md->m", v, originals[source])
    lexical = ~np.isin(kinds, ["signature", "combined"])  # a signature outweighs one word
    assert (sims[lexical] > 0.3).all() and (sims[kinds == "case_punct"] > 0.999).all()
    for copy, own in zip(np.asarray(copies, object)[kinds == "signature"], short):
        assert words_of(copy)[:len(words_of(own))] == words_of(own)
    assert make_text_copies([""], kinds=("drop_words", "truncate"))[0] == ["", ""]
