"""params.yaml section train: the fine-tuning schedule and optimisation.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.errors import ParamsError
from pipeline.params.fields import in_range


@dataclass(frozen=True)
class Phase:
    """One training phase: which layer groups train, for how long, at what learning rate."""

    epochs: int = field(metadata=in_range(ge=1))
    # head: only the new head; an integer n: the head and the n layer groups below it;
    # all: everything. Frozen groups keep their weights and BatchNorm statistics.
    unfreeze: Literal["head", "all"] | int
    lr_mult: float = field(default=1.0, metadata=in_range(gt=0))  # lr = train.lr * lr_mult
    # "" takes train.schedule
    schedule: Literal["", "cosine", "step", "onecycle", "plateau", "constant"] = ""

    def __post_init__(self) -> None:
        if isinstance(self.unfreeze, int) and self.unfreeze < 0:
            raise ParamsError(f"unfreeze = {self.unfreeze}: give head, all or a number of "
                              f"layer groups >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule and optimisation."""

    seed: int = field(metadata=in_range(ge=0))
    lr: float = field(metadata=in_range(gt=0, le=10))  # the head's learning rate
    layer_decay: float = field(metadata=in_range(gt=0, le=1))  # x this per group below the head
    optimizer: Literal["adamw", "sgd"]
    momentum: float = field(metadata=in_range(ge=0, lt=1))  # sgd only
    weight_decay: float = field(metadata=in_range(ge=0))  # never on norm and bias parameters
    batch_size: int = field(metadata=in_range(ge=1))
    accumulate: int = field(metadata=in_range(ge=1))  # batches per optimizer step
    clip_grad: float = field(metadata=in_range(ge=0))  # max gradient norm (0: off)
    schedule: Literal["cosine", "step", "onecycle", "plateau", "constant"]
    warmup_epochs: float = field(metadata=in_range(ge=0))  # linear warmup at each phase start
    decay_epochs: int = field(metadata=in_range(ge=1))  # step: lr x decay_gamma every N epochs
    decay_gamma: float = field(metadata=in_range(gt=0, lt=1))  # step and plateau factor
    plateau_patience: int = field(metadata=in_range(ge=0))  # plateau: epochs without gain
    label_smoothing: float = field(metadata=in_range(ge=0, lt=1))
    mixup: float = field(metadata=in_range(ge=0))  # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = field(metadata=in_range(ge=0))  # Beta(alpha, alpha) of cutmix (0: off)
    ema_decay: float = field(metadata=in_range(ge=0, lt=1))  # EMA of the weights (0: off)
    monitor: Literal["val_accuracy", "val_macro_f1", "val_loss"]  # picks the best epoch
    patience: int = field(metadata=in_range(ge=0))  # end a phase after N epochs without gain
    bn: Literal["frozen", "train"]  # BatchNorm statistics of trainable layers (see models)
    feature_cache: bool  # head-only phases train on stored backbone features
    # random horizontal flips each epoch; auto: on for photos, off for small images such
    # as digits (the cache's data profile, pipeline.finetune.resolve_auto)
    hflip: bool | Literal["auto"]
    shift: int = field(metadata=in_range(ge=0))  # random translation each epoch, pixels
    amp: bool  # mixed precision on CUDA; ignored on CPU
    compile: bool  # torch.compile the model
    # auto: pipeline.finetune.AUTO_PHASES for the cache's data profile
    phases: tuple[Phase, ...] | Literal["auto"]

    @property
    def phase_list(self) -> tuple[Phase, ...]:
        """``phases`` after ``auto`` was resolved (pipeline.finetune.resolve_auto)."""
        if isinstance(self.phases, str):
            raise ParamsError("train.phases is still auto: resolve it for the data first")
        return self.phases

    @property
    def flips(self) -> bool:
        """``hflip`` after ``auto`` was resolved (pipeline.finetune.resolve_auto)."""
        if isinstance(self.hflip, str):
            raise ParamsError("train.hflip is still auto: resolve it for the data first")
        return self.hflip

    def __post_init__(self) -> None:
        if not self.phases:
            raise ParamsError("train.phases is empty: give at least one phase")
