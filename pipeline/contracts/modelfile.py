"""``models/model.pt``, the trained model's file: the one module that writes and reads it.

A dict saved with ``torch.save``: ``state_dict`` (the best epoch's weights) and ``meta``
(``pipeline.finetuning.trainrun.model_meta``): ``classes`` in index order, ``model`` (the model
section as run: name, weights, drop_rate, head), ``library`` and ``arch``, ``pretrained``
(where the starting weights came from, their sha256), ``layer_groups``, ``preprocessing``
(image_size, fit, mean, std; a text model's modality, encoder, max_length, truncation
and pad_id), ``params`` (base and train as run, auto resolved), ``best`` (the chosen
epoch's scores), ``auto``, ``bagging``, and the environment (library versions, the
lock's hash, the CPU kernels). It is read back with ``weights_only`` (no
pickled code runs), and :func:`load_trained` rebuilds the architecture its meta names
and checks that the weights fit it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path
from pipeline.finetuning.backbones import BackboneSpec, HeadSpec, load_torch_file, state_mismatch
from pipeline.modality.models import meta_modality, model_kind


def save_model(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the model file whole or not at all (a full disk never leaves half of one)."""
    with atomic_path(path) as partial:
        torch.save({"state_dict": state_dict, "meta": meta}, partial)


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the meta of a model file, or one line saying why it is none."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run the train stage first (dvc repro)")
    checkpoint = load_torch_file(path)
    if not (isinstance(checkpoint, dict) and {"state_dict", "meta"} <= checkpoint.keys()):
        raise PipelineError(f"{path} is not a model saved by the train stage (a bare state "
                            f"dict or another object, without the classes, architecture and "
                            f"preprocessing it needs): use models/model.pt")
    return checkpoint["state_dict"], checkpoint["meta"]


def load_trained(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` (read weights_only) and return it with
    its input preprocessing and its meta."""
    state_dict, meta = read_model_file(path)
    try:
        saved: dict[str, Any] = meta["model"].get("head", {})  # none before model.head
        head = HeadSpec(**{**saved, "hidden": tuple(saved.get("hidden", ()))})
        cfg = BackboneSpec(**{**meta["model"], "head": head})
        prep = meta["preprocessing"]
        num_classes = len(meta["classes"])
    except (KeyError, TypeError) as exc:
        raise PipelineError(f"{path}: its meta lacks or garbles {exc}") from None
    kind = model_kind(meta_modality(meta))
    model = kind.create(cfg, num_classes, pretrained=False)[0]
    return _load_weights(path, model, state_dict, meta, cfg.name), kind.preprocessing(prep), meta


def _load_weights(path: Path, model: nn.Module, state_dict: dict[str, torch.Tensor],
                  meta: dict[str, Any], name: str) -> nn.Module:
    if problem := state_mismatch(model.state_dict(), state_dict):
        raise PipelineError(f"{path}: its weights do not fit the model its meta names "
                            f"({name}, {len(meta['classes'])} classes): {problem}")
    model.load_state_dict(state_dict)
    return model


def is_text(meta: dict[str, Any]) -> bool:
    """Whether a model's meta is a text model's (token ids in, not pixels)."""
    return meta_modality(meta) == "text"


def text_tokenizer(meta: dict[str, Any]) -> Any:
    """The tokenizer that made a text model's token ids (the encoder its meta names),
    checked against the pad id the model was trained with."""
    from pipeline.modality.text.model import load_tokenizer

    prep = meta["preprocessing"]
    tokenizer = load_tokenizer(prep["encoder"])
    if tokenizer.pad_token_id != prep["pad_id"]:
        raise PipelineError(f"encoder {prep['encoder']}: its tokenizer pads with id "
                            f"{tokenizer.pad_token_id}, the model was trained with "
                            f"{prep['pad_id']}: not the tokenizer the model was trained with")
    return tokenizer

