"""The embed stage for texts: one pass that decodes every text, hashes its normalised
form for exact copies, embeds it with the encoder (pooled as it was trained, unit rows)
and computes its word-shingle signal; and the calibration copies (edited copies of a
seeded sample, :func:`pipeline.modality.text.signals.make_text_copies`) in both signals, which the
clean stage calibrates its near-copy rule on, as for images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.contracts.embedfiles import EmbedMeta, EmbedOutput
from pipeline.core.errors import PipelineError
from pipeline.modality.itemkinds import item_texts
from pipeline.modality.text.decoding import content_hash, dominant_script
from pipeline.modality.text.model import (
    encode,
    load_encoder,
    model_limit,
    text_classifier,
    text_model_name,
    tokenize,
    used_width,
)
from pipeline.modality.text.signals import make_text_copies, shingle_vectors
from pipeline.params.embed import EmbedConfig

TEXT_SIGNALS = ("embedding", "shingles")  # the near-copy signals of texts, in rule order
EMBED_TOKENS = 256  # tokens of each text the embedding sees (its start; at most the limit)


class TextEmbedder:
    """An encoder's pooled, L2-normalised sentence embeddings of raw texts."""

    def __init__(self, name: str, device: torch.device, batch_size: int) -> None:
        encoder, self.tokenizer, pooling, _ = load_encoder(name)
        self.model = text_classifier(encoder, torch.nn.Identity(), self.tokenizer, pooling)
        self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.length = min(EMBED_TOKENS, model_limit(encoder.config, self.tokenizer))
        self.info = {"library": "transformers", "arch": type(encoder).__name__,
                     "encoder": name, "pooling": pooling,
                     "max_length": self.length}

    @torch.inference_mode()
    def __call__(self, texts: list[str], *, desc: str = "embed") -> np.ndarray:
        """(N, D) float32 unit rows, batched by length (short texts pad less)."""
        ids = encode(self.tokenizer, texts, self.length, rows=tokenize(self.tokenizer, texts))
        order = np.argsort((ids != self.pad_id).sum(1), kind="stable")
        out: np.ndarray | None = None
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, mininterval=1.0,
                          leave=False):
            rows = order[start:start + self.batch_size]
            batch = torch.from_numpy(ids[rows]).long()
            batch = batch[:, :used_width(batch, self.pad_id)].to(self.device)
            feats = torch.nn.functional.normalize(self.model.features(batch).float(), dim=1)
            if out is None:
                out = np.zeros((len(texts), feats.shape[1]), np.float32)
            out[rows] = feats.cpu().numpy()
        return out if out is not None else np.zeros((0, 0), np.float32)


def embed_texts(df: pd.DataFrame, root: Path, cfg: EmbedConfig, device: torch.device
                ) -> EmbedOutput:
    """Decode, hash, embed and shingle every row of the prepared manifest once, and make
    and embed the calibration copies of a seeded sample; what the embed stage writes."""
    torch.manual_seed(0)
    name, note = text_model_name(cfg.model)
    if note:
        print(f"embed: {note.replace('model.name', 'embed.model')}")
    embedder = TextEmbedder(name, device, cfg.batch_size)
    n = len(df)
    found = item_texts(df, root, range(n))
    ok = [not isinstance(f, Exception) for f in found]
    if not any(ok):
        first = next(f"{p}: {e}" for p, e in zip(df["path"], found))
        raise PipelineError(f"none of the {n} texts could be read (e.g. {first}); zero texts "
                            f"to work with")
    good = np.flatnonzero(ok)
    texts = [found[i][0] for i in good]  # type: ignore[index]
    feats = embedder(texts)
    embeddings = np.zeros((n, feats.shape[1]), np.float32)
    embeddings[good] = feats
    shingles = shingle_vectors(texts)
    signal = np.zeros((n, shingles.shape[1]), np.float32)
    signal[good] = shingles
    chosen = set(np.random.default_rng(0).permutation(n)[:cfg.calibration_sample].tolist())
    sample = {int(i): texts[j] for j, i in enumerate(good) if i in chosen}
    copies, source, kinds = embed_text_copies(embedder, sample)
    hashes = [content_hash(f[0]) if k else None for f, k in zip(found, ok)]  # type: ignore[index]
    lengths = [len(f[0]) if k else 0 for f, k in zip(found, ok)]  # type: ignore[index]
    meta = EmbedMeta(
        ids=list(df["image_id"]), valid=ok, pixel_hash=hashes,
        error=["" if k else str(f) for f, k in zip(found, ok)],
        model=embedder.info, image_size=0, image_size_reason="",
        notes=[f[1] if k else "" for f, k in zip(found, ok)],  # type: ignore[index]
        modality="text", signals=TEXT_SIGNALS, lengths=lengths,
        scripts=[dominant_script(f[0]) if k else "" for f, k in zip(found, ok)])  # type: ignore[index]
    summary = (f"embed: {sum(ok)} of {n} texts, dimension {embeddings.shape[1]}, "
               f"{len(source)} calibration copies of {len(set(source.tolist()))} texts; "
               f"longest {max(lengths):,} characters")
    return EmbedOutput(embeddings, meta, {"shingles": signal}, copies, source, kinds, summary)


def embed_text_copies(embedder: TextEmbedder, sample: dict[int, str]
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Edited copies of the sampled texts in both signals; (signals, source rows, kinds)."""
    order = sorted(sample)
    copies, source, kinds = make_text_copies([sample[i] for i in order], seed=0)
    signals = {"embedding": embedder(copies, desc="copies"),
               "shingles": shingle_vectors(copies)}
    return signals, np.asarray([order[int(j)] for j in source], np.int64), kinds
