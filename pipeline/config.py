"""Typed, frozen, validated configuration: one dataclass per section of params.yaml.

Stages call :func:`load_sections` once at their boundary and pass the objects down.
Every key must be present in params.yaml (it is the single source of settings); unknown
keys, wrong types and out-of-range values raise :class:`ParamsError` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import ParamsError, PipelineError, run_stage  # noqa: F401 (re-exported)

PARAMS_FILE = Path("params.yaml")


def _range(*, gt: float | None = None, ge: float | None = None, le: float | None = None,
           lt: float | None = None) -> dict[str, Any]:
    """Field metadata for a numeric bound, checked by the loader."""
    return {"range": {"gt": gt, "ge": ge, "le": le, "lt": lt}}


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = field(metadata=_range(ge=0))
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from."""

    source: Literal["demo", "folder", "csv"]
    root: str  # images folder; manifest paths are relative to it
    manifest: str  # CSV manifest, read when source is csv

    def __post_init__(self) -> None:
        if not self.root:
            raise ParamsError("data.root is empty: give the folder that holds the images")


@dataclass(frozen=True)
class EmbedConfig:
    """The pretrained backbone whose pooled features the data-quality checks use."""

    model: str  # a timm or torchvision model name, as model.name
    weights: str  # as model.weights
    image_size: int = field(metadata=_range(ge=8, le=1024))  # pixels, square
    batch_size: int = field(metadata=_range(ge=1))
    max_pixels: int = field(metadata=_range(gt=0))  # larger images are unreadable (bombs)


@dataclass(frozen=True)
class MaxRates:
    """Largest acceptable share of images per issue type; above it the clean stage fails."""

    unreadable: float = field(metadata=_range(ge=0, le=1))
    exact_duplicate: float = field(metadata=_range(ge=0, le=1))
    near_duplicate: float = field(metadata=_range(ge=0, le=1))
    conflicting_labels: float = field(metadata=_range(ge=0, le=1))
    label_issue: float = field(metadata=_range(ge=0, le=1))
    outlier: float = field(metadata=_range(ge=0, le=1))


@dataclass(frozen=True)
class CleanConfig:
    """Data-quality checks and what to do with what they find."""

    exact_duplicates: Literal["drop", "flag"]  # drop all but one member of each cluster
    near_duplicates: Literal["drop", "flag"]  # drop all but one member of each cluster
    near_duplicate_threshold: float = field(metadata=_range(gt=0, le=1))  # cosine similarity
    conflicting_labels: Literal["drop", "flag"]  # drop every member of a mixed-label cluster
    label_issues: Literal["flag", "drop"]  # likely label errors (cleanlab)
    label_method: Literal["prune_by_noise_rate", "prune_by_class", "both",
                          "confident_learning", "predicted_neq_given"]  # cleanlab filter_by
    label_folds: int = field(metadata=_range(ge=2))  # K of the out-of-fold probe
    # the out-of-fold probe's model; auto: logistic up to exact_search_max images, lda above
    label_probe: Literal["auto", "logistic", "lda"]
    probe_dims: int = field(metadata=_range(ge=2))  # principal components the lda probe sees
    outliers: Literal["flag", "drop"]
    outlier_threshold: float = field(metadata=_range(gt=0, le=2))  # mean cosine distance
    neighbours: int = field(metadata=_range(ge=1, le=100))  # k of the neighbour search
    exact_search_max: int = field(metadata=_range(ge=1))  # images; above: k-means cell search
    search_probes: int = field(metadata=_range(ge=1))  # cells each image is compared with
    max_rate: MaxRates  # gates: fail when an issue type exceeds its share

    def probe_for(self, n: int) -> str:
        """The probe label_probe means for ``n`` images (auto: lda only for large sets,
        where the logistic probe's K fits take minutes)."""
        if self.label_probe != "auto":
            return self.label_probe
        return "lda" if n > self.exact_search_max else "logistic"


@dataclass(frozen=True)
class Fractions:
    """Share of images per split; they sum to 1."""

    train: float = field(metadata=_range(gt=0, le=1))
    val: float = field(metadata=_range(ge=0, lt=1))
    test: float = field(metadata=_range(ge=0, lt=1))

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ParamsError(
                f"split.fractions: train + val + test must be 1, got "
                f"{self.train} + {self.val} + {self.test} = {total:g}")


@dataclass(frozen=True)
class SplitConfig:
    """How kept images are divided into train, val and test."""

    method: Literal["random", "stratified", "group", "temporal", "predefined"]
    fractions: Fractions
    group_column: str
    time_column: str
    cutoffs: tuple[str, ...]  # temporal: (val start, test start) dates; empty: by fractions
    embargo_days: float = field(metadata=_range(ge=0))  # temporal gap left out between splits
    on_leakage: Literal["fail", "warn", "drop_from_train"]  # what the leakage audit does
    # cosine similarity of embed's features at or above which a val/test image is a near
    # copy of a train image (as clean.near_duplicate_threshold)
    near_duplicate_threshold: float = field(metadata=_range(gt=0, le=1))

    def __post_init__(self) -> None:
        if self.cutoffs and len(self.cutoffs) != 2:
            raise ParamsError(f"split.cutoffs = {list(self.cutoffs)}: give two dates (val "
                              f"start, test start) or an empty list")


@dataclass(frozen=True)
class AugmentConfig:
    """The seeded torchvision transforms.v2 policy that makes the cached training views."""

    crop_scale_min: float = field(metadata=_range(gt=0, le=1))  # RandomResizedCrop area
    hflip: bool  # random left-right flip
    rotation: float = field(metadata=_range(ge=0, le=180))  # degrees, uniform in +-rotation
    color_jitter: float = field(metadata=_range(ge=0, le=1))  # brightness/contrast/saturation
    auto: Literal["none", "randaugment", "trivialaugment"]  # an automatic policy on top
    erasing: float = field(metadata=_range(ge=0, le=1))  # RandomErasing probability


@dataclass(frozen=True)
class CacheConfig:
    """Decoded, resized arrays that training reads instead of image files."""

    image_size: int = field(metadata=_range(ge=8, le=1024))  # pixels, square
    fit: Literal["crop", "pad", "stretch"]  # how a non-square image becomes square
    views: int = field(metadata=_range(ge=0, le=1000))  # K augmented copies per train image
    seed: int = field(metadata=_range(ge=0))  # seeds the views: same seed, same bytes
    augment: AugmentConfig


@dataclass(frozen=True)
class ModelConfig:
    """The backbone and where its pretrained weights come from."""

    name: str  # timm or torchvision architecture; prefix "timm:" / "torchvision:" to force
    weights: str  # default | none | a timm tag | a torchvision weights name | a file
    drop_rate: float = field(metadata=_range(ge=0, lt=1))  # dropout before the new head

    def __post_init__(self) -> None:
        if not self.name:
            raise ParamsError("model.name is empty: give a timm or torchvision model name")
        if not self.weights:
            raise ParamsError("model.weights is empty: use default, none, a tag or a file path")


@dataclass(frozen=True)
class Phase:
    """One training phase: which layer groups train, for how long, at what learning rate."""

    epochs: int = field(metadata=_range(ge=1))
    # head: only the new head; an integer n: the head and the n layer groups below it;
    # all: everything. Frozen groups keep their weights and BatchNorm statistics.
    unfreeze: Literal["head", "all"] | int
    lr_mult: float = field(default=1.0, metadata=_range(gt=0))  # lr = train.lr * lr_mult
    # "" takes train.schedule
    schedule: Literal["", "cosine", "step", "onecycle", "plateau", "constant"] = ""

    def __post_init__(self) -> None:
        if isinstance(self.unfreeze, int) and self.unfreeze < 0:
            raise ParamsError(f"unfreeze = {self.unfreeze}: give head, all or a number of "
                              f"layer groups >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule and optimisation."""

    seed: int = field(metadata=_range(ge=0))
    lr: float = field(metadata=_range(gt=0, le=10))  # the head's learning rate
    layer_decay: float = field(metadata=_range(gt=0, le=1))  # x this per group below the head
    optimizer: Literal["adamw", "sgd"]
    momentum: float = field(metadata=_range(ge=0, lt=1))  # sgd only
    weight_decay: float = field(metadata=_range(ge=0))  # never on norm and bias parameters
    batch_size: int = field(metadata=_range(ge=1))
    accumulate: int = field(metadata=_range(ge=1))  # batches per optimizer step
    clip_grad: float = field(metadata=_range(ge=0))  # max gradient norm (0: off)
    schedule: Literal["cosine", "step", "onecycle", "plateau", "constant"]
    warmup_epochs: float = field(metadata=_range(ge=0))  # linear warmup at each phase start
    decay_epochs: int = field(metadata=_range(ge=1))  # step: lr x decay_gamma every N epochs
    decay_gamma: float = field(metadata=_range(gt=0, lt=1))  # step and plateau factor
    plateau_patience: int = field(metadata=_range(ge=0))  # plateau: epochs without gain
    label_smoothing: float = field(metadata=_range(ge=0, lt=1))
    mixup: float = field(metadata=_range(ge=0))  # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = field(metadata=_range(ge=0))  # Beta(alpha, alpha) of cutmix (0: off)
    ema_decay: float = field(metadata=_range(ge=0, lt=1))  # EMA of the weights (0: off)
    monitor: Literal["val_accuracy", "val_macro_f1", "val_loss"]  # picks the best epoch
    patience: int = field(metadata=_range(ge=0))  # end a phase after N epochs without gain
    bn: Literal["frozen", "train"]  # BatchNorm statistics of trainable layers (see models)
    feature_cache: bool  # head-only phases train on stored backbone features
    hflip: bool  # random horizontal flips each epoch (off for digits and text)
    shift: int = field(metadata=_range(ge=0))  # random translation each epoch, pixels
    amp: bool  # mixed precision on CUDA; ignored on CPU
    compile: bool  # torch.compile the model
    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ParamsError("train.phases is empty: give at least one phase")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of the final model on the test split."""

    batch_size: int = field(metadata=_range(ge=1))
    tta: Literal["none", "flip", "crops"]  # test-time augmentation, reported as tta_*
    bootstrap: int = field(metadata=_range(ge=100))  # resamples for the 95 % intervals
    min_accuracy: float = field(metadata=_range(ge=0, le=1))  # gate: fail below (0: off)
    max_ece: float = field(metadata=_range(ge=0, le=1))  # gate: fail above (1: off)


SECTIONS: dict[str, type] = {
    "base": BaseConfig,
    "data": DataConfig,
    "embed": EmbedConfig,
    "clean": CleanConfig,
    "split": SplitConfig,
    "cache": CacheConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
}


# ----------------------------------------------------------------------------- loading


def _unknown_key(key: str, valid: Sequence[str]) -> ParamsError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else "."
    return ParamsError(
        f"unknown key {key!r}{hint} Valid keys here: {', '.join(prefix + v for v in valid)}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise naming the key."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ParamsError(f"{key} = {value!r} is not allowed; choose one of: "
                          f"{', '.join(map(str, choices))}")
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return _convert(value, arm, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(" / ".join(errors))
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: expected a list")
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ParamsError(f"{key} = {value!r}: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ParamsError(f"{key} = {value!r}: expected an integer")
    if tp is float:
        # `dvc exp run -S train.lr=0.000001` writes 1e-06, which PyYAML reads as a string.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ParamsError(f"{key} = {value!r}: expected a number") from None
        else:
            raise ParamsError(f"{key} = {value!r}: expected a number")
        if not math.isfinite(number):
            raise ParamsError(f"{key} = {value!r}: expected a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamsError(f"{key} = {value!r}: expected a string")
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _check_range(value: float, bounds: Mapping[str, float | None], key: str) -> None:
    tests = {
        "gt": (lambda v, b: v > b, "greater than"),
        "ge": (lambda v, b: v >= b, "at least"),
        "lt": (lambda v, b: v < b, "less than"),
        "le": (lambda v, b: v <= b, "at most"),
    }
    for name, bound in bounds.items():
        if bound is not None and not tests[name][0](value, bound):
            allowed = " and ".join(f"{tests[n][1]} {b:g}" for n, b in bounds.items()
                                   if b is not None)
            raise ParamsError(f"{key} = {value!r} is out of range: it must be {allowed}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"{prefix} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}.{key}", list(fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in data:
            if f.default is not dataclasses.MISSING:  # optional keys (phases only)
                kwargs[name] = f.default
                continue
            raise ParamsError(f"missing key {key!r} in params.yaml")
        value = _convert(data[name], hints[name], key)
        if "range" in f.metadata:
            _check_range(value, f.metadata["range"], key)
        kwargs[name] = value
    return cls(**kwargs)


def parse_sections(params: Mapping[str, Any], *names: str) -> tuple[Any, ...]:
    """Validate the named sections of an already-loaded params mapping."""
    for section in params:
        if section not in SECTIONS:
            raise _unknown_key(str(section), list(SECTIONS))
    out = []
    for name in names:
        if name not in params:
            raise ParamsError(f"params.yaml has no section {name!r}")
        out.append(_build(SECTIONS[name], params[name], name))
    return tuple(out)


def load_sections(*names: str, path: Path = PARAMS_FILE) -> tuple[Any, ...]:
    """Read params.yaml once and return the named sections as typed, frozen objects.

    The names a stage passes here must equal the ``params`` list of its stage in
    dvc.yaml (tests/test_dvc_yaml.py checks it), so DVC reruns it when they change.
    """
    if not path.exists():
        raise ParamsError(f"{path} not found: run stages from the project root")
    with path.open() as fh:
        params = yaml.safe_load(fh) or {}
    return parse_sections(params, *names)


def load_params(overrides: Sequence[str] = (), *, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as plain data with ``section.key=value`` overrides (values read as
    YAML, as ``dvc exp run -S`` does), for benchmarks and scripts; validate the result
    with :func:`parse_sections`. An override of a key params.yaml lacks is an error."""
    params = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"override {item!r}: give section.key=value with a key that "
                              f"params.yaml has")
        node[leaf] = yaml.safe_load(value)
    return params


def as_dict(config: Any) -> dict[str, Any]:
    """A config object as plain data (for saving with models and metrics)."""
    return dataclasses.asdict(config)
