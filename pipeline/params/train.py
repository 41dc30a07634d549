"""params.yaml section train: the fine-tuning schedule and optimisation.

One module per section, so that DVC reruns only the stages that read the section whose
schema changed (each stage declares the modules it imports). Loaded by
:func:`pipeline.core.config.load_sections`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.errors import ParamsError
from pipeline.params.fields import BATCH_MAX, EPOCHS_MAX, LR_MAX, SEED_MAX, in_range


@dataclass(frozen=True)
class Phase:
    """One training phase: which layer groups train, for how long, at what learning rate."""

    epochs: int = field(metadata=in_range(ge=1, le=EPOCHS_MAX))
    # head: only the new head; an integer n: the head and the n layer groups below it;
    # all: everything; a list of group names (the train log lists them): those and the
    # head; gradual: one more group every step_epochs epochs, down to `until` (expanded
    # into phases when training starts). Frozen groups keep weights and BatchNorm statistics.
    unfreeze: Literal["head", "all", "gradual"] | int | tuple[str, ...] = field(
        metadata=in_range(le=1000))
    lr_mult: float = field(default=1.0, metadata=in_range(gt=0, le=1000))  # lr = train.lr * lr_mult
    # "" takes train.schedule
    schedule: Literal["", "cosine", "step", "exponential", "onecycle", "plateau",
                      "constant"] = ""
    layer_decay: float = field(default=0.0, metadata=in_range(ge=0, le=1))  # 0: train.layer_decay
    # explicit peak learning rates by group name (and `default` for the other trainable
    # groups; without it they keep the rule lr x lr_mult x layer_decay^depth)
    lrs: dict[str, float] = field(default_factory=dict, metadata=in_range(le=LR_MAX))
    # gradual: epochs per step
    step_epochs: int = field(default=0, metadata=in_range(ge=0, le=EPOCHS_MAX))
    # gradual: the last step's unfreeze (n groups or all)
    until: Literal["all"] | int = field(default="all", metadata=in_range(le=1000))

    def __post_init__(self) -> None:
        if isinstance(self.unfreeze, int) and self.unfreeze < 0:
            raise ParamsError(f"unfreeze = {self.unfreeze}: give head, all or a number of "
                              f"layer groups >= 0")
        if isinstance(self.unfreeze, tuple) and not self.unfreeze:
            raise ParamsError("unfreeze = []: name at least one layer group, or give head")
        if any(lr <= 0 for lr in self.lrs.values()):
            raise ParamsError(f"lrs = {self.lrs}: every learning rate must be greater than 0")
        gradual = self.unfreeze == "gradual"
        if gradual and self.step_epochs < 1:
            raise ParamsError("step_epochs = 0: unfreeze gradual needs step_epochs >= 1 "
                              "(epochs before the next group unfreezes)")
        if gradual and isinstance(self.until, int) and self.until < 1:
            raise ParamsError(f"until = {self.until}: give all or a number of layer groups >= 1")
        if not gradual and (self.step_epochs or self.until != "all"):
            raise ParamsError("step_epochs and until apply only with unfreeze: gradual")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning schedule and optimisation."""

    seed: int = field(metadata=in_range(ge=0, le=SEED_MAX))
    lr: float = field(metadata=in_range(gt=0, le=LR_MAX))  # the head's learning rate
    layer_decay: float = field(metadata=in_range(gt=0, le=1))  # x this per group below the head
    # adamw: decoupled weight decay; adam: L2 (weight_decay x weight added to the gradient)
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"]
    momentum: float = field(metadata=in_range(ge=0, lt=1))  # sgd and rmsprop
    nesterov: bool  # sgd with momentum > 0: Nesterov momentum
    weight_decay: float = field(metadata=in_range(ge=0, le=10))  # never on norm and bias parameters
    batch_size: int = field(metadata=in_range(ge=1, le=BATCH_MAX))
    accumulate: int = field(metadata=in_range(ge=1, le=1024))  # batches per optimizer step
    clip_grad: float = field(metadata=in_range(ge=0, le=10**6))  # max gradient norm (0: off)
    schedule: Literal["cosine", "step", "exponential", "onecycle", "plateau", "constant"]
    # linear warmup at each phase start
    warmup_epochs: float = field(metadata=in_range(ge=0, le=EPOCHS_MAX))
    # step: lr x decay_gamma every N epochs
    decay_epochs: int = field(metadata=in_range(ge=1, le=EPOCHS_MAX))
    # step and plateau: the factor; exponential: lr x decay_gamma per epoch (each step)
    decay_gamma: float = field(metadata=in_range(gt=0, lt=1))
    # cosine: the floor (eta_min), per group
    min_lr: float = field(metadata=in_range(ge=0, le=LR_MAX))
    # cosine: epochs from peak to min_lr after the warmup (0: the rest of the phase)
    cosine_epochs: float = field(metadata=in_range(ge=0, le=EPOCHS_MAX))
    # plateau: epochs without gain
    plateau_patience: int = field(metadata=in_range(ge=0, le=EPOCHS_MAX))
    label_smoothing: float = field(metadata=in_range(ge=0, lt=1))
    mixup: float = field(metadata=in_range(ge=0, le=100))  # Beta(alpha, alpha) of mixup (0: off)
    cutmix: float = field(metadata=in_range(ge=0, le=100))  # Beta(alpha, alpha) of cutmix (0: off)
    mixup_prob: float = field(metadata=in_range(ge=0, le=1))  # share of batches mixed
    mixup_switch_prob: float = field(metadata=in_range(ge=0, le=1))  # both on: cutmix share
    ema_decay: float = field(metadata=in_range(ge=0, lt=1))  # EMA of the weights (0: off)
    monitor: Literal["val_accuracy", "val_macro_f1", "val_loss"]  # picks the best epoch
    # best: the epoch with the best monitored score; latest_within_se: the latest epoch
    # within one standard error of the best so far (a one-image blip is noise)
    select: Literal["latest_within_se", "best"]
    # end a phase after N epochs without gain
    patience: int = field(metadata=in_range(ge=0, le=EPOCHS_MAX))
    # phase: patience ends the phase (the next one still runs); run: it ends the run
    patience_scope: Literal["phase", "run"]
    # balanced: loss weights n / (classes x count); a mapping: class name -> weight (1 for
    # the classes it leaves out)
    class_weights: Literal["none", "balanced"] | dict[str, float] = field(
        metadata=in_range(le=10**6))
    # balanced: draw rows with p ~ 1 / class count; by_length: shuffled, then batches of
    # similar length (transformers' length-grouped order; texts); auto: by_length for
    # texts, shuffle for images (pipeline.finetuning.finetune.resolve_auto)
    sampler: Literal["auto", "shuffle", "balanced", "by_length"]
    bn: Literal["frozen", "train"]  # BatchNorm statistics of trainable layers (see models)
    feature_cache: bool  # compute frozen parts once: head-only phases; texts: partial ones
    # train on a stratified bootstrap sample of the train split drawn from train.seed
    # (bagging: members of a seed ensemble then differ in their data, not only their seed)
    bagging: bool
    # random horizontal flips each epoch; auto: on for photos, off for small images such
    # as digits (the cache's data profile, pipeline.finetuning.finetune.resolve_auto)
    hflip: bool | Literal["auto"]
    shift: int = field(metadata=in_range(ge=0, le=1024))  # random translation each epoch, pixels
    amp: bool  # mixed precision on CUDA; ignored on CPU
    compile: bool  # torch.compile the model
    # auto: pipeline.finetuning.finetune.AUTO_PHASES for the cache's data profile
    phases: tuple[Phase, ...] | Literal["auto"]

    @property
    def phase_list(self) -> tuple[Phase, ...]:
        """``phases`` after ``auto`` was resolved (pipeline.finetuning.finetune.resolve_auto)."""
        if isinstance(self.phases, str):
            raise ParamsError("train.phases is still auto: resolve it for the data first")
        return self.phases

    @property
    def flips(self) -> bool:
        """``hflip`` after ``auto`` was resolved (pipeline.finetuning.finetune.resolve_auto)."""
        if isinstance(self.hflip, str):
            raise ParamsError("train.hflip is still auto: resolve it for the data first")
        return self.hflip

    def __post_init__(self) -> None:
        if not self.phases:
            raise ParamsError("train.phases is empty: give at least one phase")
        schedules = {self.schedule} if isinstance(self.phases, str) else {
            p.schedule or self.schedule for p in self.phases}
        if (self.min_lr > 0 or self.cosine_epochs > 0) and "cosine" not in schedules:
            raise ParamsError(f"train.min_lr and train.cosine_epochs shape the cosine "
                              f"schedule, which no phase uses ({', '.join(sorted(schedules))})"
                              f": set train.schedule cosine, or leave them at 0")
        if isinstance(self.class_weights, dict) and (
                not self.class_weights or min(self.class_weights.values()) <= 0):
            raise ParamsError(f"train.class_weights = {self.class_weights}: give none, "
                              f"balanced, or class names with weights greater than 0")
