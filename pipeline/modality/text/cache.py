"""The cache of a text project: each split's texts as (N, L) int32 token ids of the
encoder's tokenizer, in :mod:`pipeline.contracts.cachefiles`' files, at a max length that ``auto``
reads off the train texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.contracts.cachefiles import CacheMeta, write_meta, write_rows
from pipeline.core.errors import PipelineError
from pipeline.modality.text.model import (
    LENGTH_CAP,
    LENGTH_QUANTILE,
    auto_max_length,
    encode,
    encoder_path,
    load_tokenizer,
    model_limit,
    text_model_name,
    token_lengths,
    tokenize,
)

TRUNCATIONS = ("head", "head_tail")


def resolve_max_length(tokenizer: Any, train_rows: Sequence[Sequence[int]],
                       max_length: int | str, limit: int) -> tuple[int, str]:
    """(max length, why): ``auto`` covers most train texts whole, within ``limit``."""
    if max_length != "auto":
        if not isinstance(max_length, int) or not 8 <= max_length <= limit:
            raise PipelineError(f"max length {max_length}: give auto or 8 to {limit} "
                                f"(the encoder's limit)")
        return max_length, f"{max_length} tokens (set)"
    lengths = token_lengths(tokenizer, train_rows)
    chosen = auto_max_length(lengths, limit)
    whole = float(np.mean(lengths <= chosen)) if len(lengths) else 1.0
    capped = (f"; capped at {LENGTH_CAP}: set cache.max_length up to {limit} to keep more "
              f"of each text, at a higher cost in every layer"
              if chosen == LENGTH_CAP < limit and whole < LENGTH_QUANTILE else "")
    return chosen, (f"auto: {chosen} tokens, {whole:.0%} of {len(lengths)} train texts whole "
                    f"(median {int(np.median(lengths)) if len(lengths) else 0}, encoder "
                    f"limit {limit}){capped}")


def write_text_cache(out_dir: Path, splits: Mapping[str, tuple[Sequence[str], np.ndarray,
                                                            Sequence[str]]],
                     classes: list[str], *, model_name: str, max_length: int | str = "auto",
                     truncation: str = "head") -> CacheMeta:
    """Token ids of each split (``splits``: name -> (texts, labels, ids)) and the meta that
    names the tokenizer settings; returns the meta."""
    if truncation not in TRUNCATIONS:
        raise PipelineError(f"truncation {truncation!r}: use one of {', '.join(TRUNCATIONS)}")
    from transformers import AutoConfig

    tokenizer = load_tokenizer(text_model_name(model_name)[0])
    config = AutoConfig.from_pretrained(encoder_path(text_model_name(model_name)[0]))
    limit = model_limit(config, tokenizer)
    rows = {split: tokenize(tokenizer, texts) for split, (texts, _, _) in splits.items()}
    length, reason = resolve_max_length(tokenizer, rows["train"], max_length, limit)
    print(f"text cache: max length {reason}; truncation {truncation}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, (texts, labels, _) in splits.items():
        write_rows(out_dir, split, encode(tokenizer, texts, length, truncation=truncation,
                                          rows=rows[split]), labels)
    meta = CacheMeta(classes=classes, image_size=0, fit="none", views=0,
                     ids={s: list(ids) for s, (_, _, ids) in splits.items()},
                     image_size_reason="", profile="text", modality="text",
                     text={"encoder": text_model_name(model_name)[0], "max_length": length,
                           "max_length_reason": reason, "truncation": truncation,
                           "pad_id": int(tokenizer.pad_token_id)})
    write_meta(out_dir, meta)
    return meta
