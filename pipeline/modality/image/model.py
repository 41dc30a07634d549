"""Image classifiers as a :class:`~pipeline.modality.ModelKind`: a timm or torchvision
backbone with a new head (``pipeline.finetuning.backbones``), fed normalised pixels
(:class:`~pipeline.modality.image.inputs.ImageInput`) and augmented per epoch by random
flips and shifts (:func:`random_flip_shift`). Training, the model file, evaluation, export
and prediction reach it through :func:`pipeline.modality.models.model_kind`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.finetuning.backbones import create_model
from pipeline.modality.image.inputs import ImageInput, Preprocessing


def random_flip_shift(x: torch.Tensor, *, hflip: bool, shift: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Per-image random left-right flip and translation of a (B, C, H, W) batch.

    Translation pads by ``shift`` pixels (edge values) and crops back at a random
    offset in [0, 2 * shift] per image. Random numbers come from ``generator`` (CPU).
    """
    if hflip:
        flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if shift > 0:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (b, 2), generator=generator)
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                         for i, (dy, dx) in enumerate(offsets.tolist())])
    return x


class ImageModels:
    """Image backbones (:class:`pipeline.modality.ModelKind`)."""

    name = "image"
    noun = "images"
    augment = staticmethod(random_flip_shift)

    def create(self, cfg: Any, num_classes: int, *, pretrained: bool = True,
               verbose: bool = False) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
        """(backbone with a new head, the weights' mean and std, their description)."""
        return create_model(cfg, num_classes, pretrained=pretrained)

    def preprocessing(self, saved: dict[str, Any]) -> Preprocessing:
        """The mean and std a model file's meta records."""
        return Preprocessing(tuple(saved["mean"]), tuple(saved["std"]))

    def adapter(self, model: nn.Module, prep: Preprocessing) -> ImageInput:
        """Cached uint8 images to normalised pixels."""
        return ImageInput(prep)


IMAGE_MODELS = ImageModels()
