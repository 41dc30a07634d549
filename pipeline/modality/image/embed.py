"""The embed stage for images: one pass that decodes every image, hashes its pixels for
exact copies, embeds it with the backbone (L2-normalised pooled features) and computes
its pixel signals (thumbnails, perceptual hashes, aligned views, the grey pixels of tiny
images for the copy model); and the calibration copies (synthetic near copies of a
seeded sample, :func:`pipeline.modality.image.signals.make_copies`) in every signal, which
the clean stage calibrates its near-copy rule on. ``embed.image_size: auto`` resolves
from the backbone's pretrained input size and the median short side of a seeded sample
of the images (pipeline.finetuning.autosize, upscale 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.contracts.embedfiles import EmbedMeta, EmbedOutput
from pipeline.contracts.manifest import resolve
from pipeline.core.errors import PipelineError
from pipeline.finetuning.autosize import backbone_input_size, resolve_image_size
from pipeline.finetuning.backbones import BackboneSpec, check_model_config
from pipeline.modality import UnreadableItem
from pipeline.modality.image.decoding import IMAGES
from pipeline.modality.image.inputs import ImageInput
from pipeline.modality.image.model import IMAGE_MODELS
from pipeline.modality.image.signals import (
    ALIGNED_SIZE,
    ALIGNED_VIEWS,
    PHASH_BITS,
    THUMBNAIL_SIZE,
    TINY_SIDE,
    aligned_views,
    make_copies,
    phash,
    thumbnails,
    tiny_pixels,
)
from pipeline.params.embed import EmbedConfig

UPSCALE = 8  # auto: small images are enlarged 8 x their median short side (digits: 64)
SIZE_SAMPLE = 256  # images whose header gives the median short side


def short_sides(root: Path, rel_paths: list[str], *, sample: int, seed: int = 0
                ) -> list[int]:
    """Short side in pixels of a seeded sample of the images, from their headers (the
    one decoding pass comes after, at the size these decide); unreadable ones skipped."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(len(rel_paths))[:sample])
    sides = []
    for i in rows:
        try:
            sides.append(IMAGES.extent(resolve(root, rel_paths[int(i)])))
        except UnreadableItem:
            continue
    return sides


def _embed(model: torch.nn.Module, inputs: ImageInput, batch: list[np.ndarray],
           dev: torch.device) -> np.ndarray:
    """(B, D) float32 L2-normalised features of B fitted (S, S, 3) uint8 images."""
    x = inputs.to_input(torch.from_numpy(np.stack(batch)), dev)
    return torch.nn.functional.normalize(model(x).float(), dim=1).cpu().numpy()


def embed_copies(model: torch.nn.Module, inputs: ImageInput, originals: list[np.ndarray],
                 size: int, dev: torch.device, *, batch_size: int, seed: int = 0
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Synthetic near copies of ``originals`` (pipeline.modality.image.signals.make_copies) in every
    signal; returns the signals and (M,) index into ``originals`` and (M,) kinds."""
    copies, source, kinds = make_copies(originals, seed=seed)
    feats = [_embed(model, inputs, [IMAGES.fit(c, size, fit="crop")
                                    for c in copies[start:start + batch_size]], dev)
             for start in range(0, len(copies), batch_size)]
    signals = {"embedding": np.concatenate(feats), "thumbnail": thumbnails(copies),
               "phash": phash(copies), "aligned": aligned_views(copies),
               "copy_model": tiny_pixels(copies)}
    return signals, np.stack([source, kinds])


@dataclass
class Decoded:
    """What one decoding pass over the manifest found, row-aligned with it."""
    hashes: list[str | None]  # pixel hash; None: unreadable
    errors: list[str]  # why a row is unreadable
    notes: list[str]  # what decoding left out (frames after the first)
    rows: list[int] = field(default_factory=list)  # decoded rows, in feats' order
    feats: list[np.ndarray] = field(default_factory=list)  # (B, D) per batch
    pixel_signals: dict[str, np.ndarray] = field(default_factory=dict)  # zero rows: unreadable
    originals: dict[int, np.ndarray] = field(default_factory=dict)  # calibration sample


def decode_and_embed(model: torch.nn.Module, inputs: ImageInput, root: Path,
                     paths_list: list[str], cfg: EmbedConfig, size: int, dev: torch.device,
                     sample: set[int]) -> Decoded:
    """Decode each image once, in batches: its hash, features and pixel signals, and the
    pixels of the rows in ``sample``."""
    codec, n = IMAGES, len(paths_list)
    found = Decoded(hashes=[None] * n, errors=[""] * n, notes=[""] * n, pixel_signals={
        "thumbnail": np.zeros((n, THUMBNAIL_SIZE ** 2), np.float32),
        "phash": np.zeros((n, PHASH_BITS ** 2), np.float32),
        "aligned": np.zeros((n, ALIGNED_VIEWS, ALIGNED_SIZE ** 2), np.float32),
        "copy_model": np.zeros((n, 2 + TINY_SIDE ** 2), np.uint8)})
    signal_of = {"thumbnail": thumbnails, "phash": phash, "aligned": aligned_views,
                 "copy_model": tiny_pixels}
    for start in tqdm(range(0, n, cfg.batch_size), desc="embed", mininterval=1.0):
        batch, batch_rows, decoded = [], [], []
        for i in range(start, min(start + cfg.batch_size, n)):
            try:
                pixels = codec.decode(resolve(root, paths_list[i]), max_pixels=cfg.max_pixels)
            except UnreadableItem as exc:
                found.errors[i] = str(exc)
                continue
            found.hashes[i] = codec.content_hash(pixels)
            found.notes[i] = codec.note(resolve(root, paths_list[i]))
            batch.append(codec.fit(pixels, size, fit="crop"))
            batch_rows.append(i)
            decoded.append(pixels)
            if i in sample:
                found.originals[i] = pixels
        if batch:
            found.feats.append(_embed(model, inputs, batch, dev))
            found.rows.extend(batch_rows)
            for name, values in found.pixel_signals.items():
                values[batch_rows] = signal_of[name](decoded)
    return found


def embed_images(df: pd.DataFrame, root: Path, cfg: EmbedConfig, dev: torch.device
                 ) -> EmbedOutput:
    """Decode every image of the prepared manifest once and embed it, then the
    calibration copies; what the embed stage writes."""
    paths_list = list(df["path"])
    model_cfg = BackboneSpec(name=cfg.model, weights=cfg.weights)
    check_model_config(model_cfg, section="embed")
    torch.manual_seed(0)  # embed.weights none: the same random weights in every run
    model, prep, info = IMAGE_MODELS.create(model_cfg, num_classes=0)
    model.to(dev).to(memory_format=torch.channels_last).eval()
    backbone, test_size, size_source = backbone_input_size(info["library"], info["arch"],
                                                           cfg.weights)
    sides = short_sides(root, paths_list, sample=SIZE_SAMPLE)
    size, reason = resolve_image_size(cfg.image_size, backbone_size=backbone,
                                      short_sides=sides, upscale=UPSCALE)
    print(f"embed: image_size {reason} (backbone: {size_source}, {backbone} px)")
    inputs = ImageInput(prep)
    n = len(paths_list)
    sample = set(np.random.default_rng(0).permutation(n)[:cfg.calibration_sample].tolist())
    with torch.inference_mode():
        found = decode_and_embed(model, inputs, root, paths_list, cfg, size, dev, sample)
        if not found.rows:
            first = next(f"{p}: {e}" for p, e in zip(paths_list, found.errors) if e)
            raise PipelineError(f"none of the {n} images could be decoded (e.g. "
                                f"{first}); zero images to work with")
        order = sorted(found.originals)
        copies, source_kind = (embed_copies(model, inputs, [found.originals[i] for i in order],
                                            size, dev, batch_size=cfg.batch_size)
                               if order else ({}, np.zeros((2, 0), object)))
    stacked = np.concatenate(found.feats) if found.feats else np.zeros((0, 0), np.float32)
    embeddings = np.zeros((n, stacked.shape[1]), dtype=np.float32)
    embeddings[found.rows] = stacked
    if not order:  # nothing decoded: no copies, empty files of the right width
        copies = {"embedding": np.zeros((0, embeddings.shape[1])),
                  **{name: values[:0] for name, values in found.pixel_signals.items()}}
    source = np.asarray([order[int(j)] for j in source_kind[0]], dtype=np.int64)
    valid = [h is not None for h in found.hashes]
    meta = EmbedMeta(
        ids=list(df["image_id"]), valid=valid, pixel_hash=found.hashes, error=found.errors,
        model=info, image_size=size, image_size_reason=reason, backbone_size=backbone,
        backbone_test_size=test_size,
        short_side_median=float(np.median(sides)) if sides else 0.0, notes=found.notes)
    summary = (f"embed: {sum(valid)} of {n} images, dimension {embeddings.shape[1]}, "
               f"{len(source)} calibration copies of {len(order)} images")
    return EmbedOutput(embeddings, meta, found.pixel_signals, copies, source, source_kind[1],
                       summary)
