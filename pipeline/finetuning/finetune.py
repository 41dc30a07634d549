"""The fine-tuning schedule: param groups with discriminative learning rates, the
optimizer and per-phase warmup + schedule.

One optimizer holds every parameter from the start, in one param group per layer group
(two when weight decay applies: norms and biases get none). Frozen parameters never get
gradients, so the optimizer skips them; when a phase unfreezes them they start
training, and the state of parameters that were already training carries over.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.finetuning.models import LayerGroup, trainable_indices
from pipeline.params.train import Phase, TrainConfig


def param_groups(model: nn.Module, groups: list[LayerGroup], weight_decay: float
                 ) -> list[dict[str, Any]]:
    """Optimizer param groups: per layer group, decayed weights and undecayed norms and
    biases (1-D tensors). Each carries ``layer`` (its index, 0 = stem) and ``name``."""
    params = dict(model.named_parameters())
    out = []
    for index, group in enumerate(groups):
        decay = [params[n] for n in group.params if params[n].ndim > 1]
        no_decay = [params[n] for n in group.params if params[n].ndim <= 1]
        for tensors, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if tensors:
                out.append({"params": tensors, "weight_decay": wd, "layer": index,
                            "name": group.name})
    return out


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """train.optimizer over the param groups (learning rates are set per phase), from
    timm's optimizer factory, which keeps each group's weight decay and extra keys:
    ``adamw`` (decoupled decay), ``adam`` (L2: the decay is added to the gradient),
    ``sgd`` (Nesterov when train.nesterov and momentum > 0), ``rmsprop`` (timm's
    TensorFlow-like alpha 0.9)."""
    from timm.optim import create_optimizer_v2

    name: str = cfg.optimizer
    if name == "sgd" and not (cfg.nesterov and cfg.momentum > 0):
        name = "momentum"  # timm's plain-momentum SGD (no momentum at all when 0)
    return create_optimizer_v2(groups, opt=name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum)


def group_lrs(cfg: TrainConfig, phase: Phase, names: Sequence[str],
              trainable: Collection[int]) -> list[float]:
    """Peak learning rate of each layer group in a phase, 0 for frozen ones: the phase's
    ``lrs`` for the groups it names (``default`` for the rest), else the rule ``train.lr *
    lr_mult * layer_decay ** (distance from the head)`` (the phase's layer_decay, or
    train.layer_decay)."""
    lr = cfg.lr * phase.lr_mult
    decay = phase.layer_decay or cfg.layer_decay
    n_groups = len(names)
    rule = [lr * decay ** (n_groups - 1 - i) for i in range(n_groups)]
    return [phase.lrs.get(name, phase.lrs.get("default", rule[i])) if i in trainable else 0.0
            for i, name in enumerate(names)]


def set_lrs(optimizer: torch.optim.Optimizer, lrs: list[float]) -> None:
    """Set every param group's learning rate (and the schedules' base) from its layer."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lrs[group["layer"]]


@dataclass
class Schedule:
    """A phase's learning-rate schedule: ``batch`` steps after every optimizer step,
    ``plateau`` (schedule plateau only) after every validation."""

    batch: torch.optim.lr_scheduler.LRScheduler
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"batch": self.batch.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch.load_state_dict(state["batch"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, phase: Phase, *,
                  steps_per_epoch: int, mode: Literal["min", "max"]) -> Schedule:
    """Linear warmup over ``train.warmup_epochs``, then the phase's schedule, over every
    param group: cosine (to ``train.min_lr`` over ``train.cosine_epochs``), step,
    exponential, onecycle, plateau or constant. Call after :func:`set_lrs`; ``mode`` is
    ``max`` or ``min`` (plateau)."""
    kind = phase.schedule or cfg.schedule
    total = phase.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if kind == "onecycle":  # its own warmup: rises for warmup_epochs (30 % when 0)
        if total < 3:
            raise PipelineError(f"schedule onecycle needs at least 3 optimizer steps in a "
                                f"phase; this one has {total}: use more epochs or another "
                                f"schedule")
        rise = warmup / total if warmup > 0 else 0.3
        return Schedule(torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            pct_start=min(max(rise, 2 / total), 1 - 1 / total), cycle_momentum=False))
    if kind == "plateau":  # warmup multiplies; the plateau rule then divides per epoch
        warm = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
        return Schedule(warm, torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.decay_gamma, patience=cfg.plateau_patience))
    step_size = cfg.decay_epochs * steps_per_epoch
    # cosine: over cosine_epochs (else the rest of the phase), then at the floor
    cosine_steps = round(cfg.cosine_epochs * steps_per_epoch) or total - warmup

    def factor(step: int, floor: float) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        done = step - warmup
        if kind == "cosine":
            cos = 0.5 * (1 + math.cos(math.pi * min(done / max(1, cosine_steps), 1.0)))
            return floor + (1 - floor) * cos
        if kind == "step":
            return float(cfg.decay_gamma ** (done // step_size))
        if kind == "exponential":
            return float(cfg.decay_gamma ** (done / steps_per_epoch))
        return 1.0  # constant

    # train.min_lr as a share of each group's peak: never above it, 0 for frozen groups
    floors = [min(cfg.min_lr / g["lr"], 1.0) if g["lr"] > 0 else 0.0
              for g in optimizer.param_groups]
    return Schedule(torch.optim.lr_scheduler.LambdaLR(
        optimizer, [functools.partial(factor, floor=f) for f in floors]))


# train.phases: auto, per data profile (pipeline.finetuning.autosize.data_profile). Measured with
# benchmarks/real_data.py (see the README's table).
# photo: features of a pretrained network already fit photos (ants/bees: a linear probe
#   on frozen features 0.961 at 288 px), and AdamW at the small-image rates moves every
#   weight by about lr per step, which undid the head phase (val 0.907 -> 0.744). So the
#   head trains long on stored features (nearly free), then the top groups adapt gently.
# small: images far from the pretraining photos (8x8 digits) need the whole network to
#   adapt: the digits reach 0.975+ test accuracy only with full-network epochs.
AUTO_PHASES: dict[str, tuple[Phase, ...]] = {
    "photo": (Phase(epochs=10, unfreeze="head", lr_mult=5.0),
              Phase(epochs=2, unfreeze=2, lr_mult=0.1)),
    "small": (Phase(epochs=2, unfreeze="head", lr_mult=5.0),
              Phase(epochs=6, unfreeze="all", lr_mult=0.25)),
    # texts: the head on stored encoder features, then 4 epochs of the top six transformer
    # layers (all of MiniLM's; the embeddings stay frozen) at 1e-4 (train.lr 0.002 x 0.05)
    # decaying x 0.9 per layer down, in batches of similar length. Rotten Tomatoes, 3,000
    # train snippets: 0.8187 against the padded full fine-tune's 0.8141, in 35 % of its
    # time; 3 epochs gave 0.8141, the top 4 or 5 layers 0.8095 and 0.8128 (measured.md)
    "text": (Phase(epochs=3, unfreeze="head", lr_mult=5.0),
             Phase(epochs=4, unfreeze=6, lr_mult=0.05, layer_decay=0.9)),
}
# long texts (a max length above LONG_TEXT tokens): each layer costs 2-4x more per text,
# so the second phase trains the top 4 layers on the stored output of the lower two.
# BBC News at 256 tokens: 0.9935 in a 15-min dvc repro; the top 6 took 22 min
LONG_TEXT = 128
AUTO_LONG_TEXT = (Phase(epochs=3, unfreeze="head", lr_mult=5.0),
                  Phase(epochs=3, unfreeze=4, lr_mult=0.05, layer_decay=0.9))
AUTO_HFLIP = {"photo": True, "small": False, "text": False}  # a mirrored 2 is not a digit
# texts: batches of similar length pad less (every image of a cache has one size)
AUTO_SAMPLER: dict[str, Literal["shuffle", "by_length"]] = {
    "photo": "shuffle", "small": "shuffle", "text": "by_length"}
PIXEL_ONLY = ("hflip", "shift", "mixup", "cutmix")  # train settings that texts cannot take


def _what(profile: str) -> str:
    return "texts" if profile == "text" else f"{profile} images"


def resolve_auto(cfg: TrainConfig, profile: str, *, text_length: int = 0
                 ) -> tuple[TrainConfig, list[str]]:
    """``train.phases``, ``train.hflip`` and ``train.sampler`` with ``auto`` replaced for
    the data's profile (and, for texts, the cache's max length ``text_length``: above
    :data:`LONG_TEXT` tokens :data:`AUTO_LONG_TEXT`), and one line per replaced key (for
    the log and the model's meta)."""
    notes = []
    if cfg.phases == "auto":
        long = profile == "text" and text_length > LONG_TEXT
        cfg = replace(cfg, phases=AUTO_LONG_TEXT if long else AUTO_PHASES[profile])
        steps = ", ".join(f"{p.epochs} x {p.unfreeze} at lr x {p.lr_mult:g}"
                          for p in cfg.phase_list)
        what = (f"texts of {text_length} tokens, over {LONG_TEXT}" if long
                else _what(profile))
        notes.append(f"train.phases auto ({what}): {steps}")
    if cfg.hflip == "auto":
        cfg = replace(cfg, hflip=AUTO_HFLIP[profile])
        notes.append(f"train.hflip auto ({_what(profile)}): {str(cfg.flips).lower()}")
    if cfg.sampler == "auto":
        cfg = replace(cfg, sampler=AUTO_SAMPLER[profile])
        notes.append(f"train.sampler auto ({_what(profile)}): {cfg.sampler}")
    if cfg.sampler == "by_length" and profile != "text":
        raise PipelineError("train.sampler by_length groups texts of similar length; every "
                            "image of a cache has one size: use shuffle, balanced or auto")
    if profile == "text" and (on := [n for n in PIXEL_ONLY if getattr(cfg, n)]):
        raise PipelineError(f"train.{', train.'.join(on)}: pixel augmentation, which texts "
                            f"cannot take; set {' and '.join(on)} to 0 (hflip: auto)")
    return cfg, notes


def fit_auto_depth(cfg: TrainConfig, groups: list[LayerGroup]
                   ) -> tuple[TrainConfig, list[str]]:
    """The ``auto`` text schedule on an encoder with fewer transformer layers than it
    unfreezes: every layer but the embeddings (the group below them), with a note; any
    other schedule as it is (a count past the model fails in :func:`check_phases`)."""
    below = len(groups) - 2  # the groups between the embeddings and the head
    if cfg.phases not in (AUTO_PHASES["text"], AUTO_LONG_TEXT) or below < 1:
        return cfg, []
    phases = tuple(replace(p, unfreeze=below) if isinstance(p.unfreeze, int)
                   and p.unfreeze > below else p for p in cfg.phase_list)
    if phases == cfg.phase_list:
        return cfg, []
    return replace(cfg, phases=phases), [f"train.phases auto (texts): the encoder has {below} "
                                         f"layers; its phases unfreeze at most {below}"]


def expand_gradual(cfg: TrainConfig, groups: list[LayerGroup]
                   ) -> tuple[TrainConfig, list[str]]:
    """``train.phases`` with each ``unfreeze: gradual`` phase written out: the head for
    ``step_epochs`` epochs, then one more group every ``step_epochs`` epochs down to
    ``until``, which trains for the epochs left; and one line per expanded phase."""
    phases: list[Phase] = []
    notes = []
    below = len(groups) - 1  # groups under the head
    for i, phase in enumerate(cfg.phase_list):
        if phase.unfreeze != "gradual":
            phases.append(phase)
            continue
        last = below if phase.until == "all" else phase.until
        if last > below:
            raise PipelineError(f"train.phases[{i}].until = {last}, but the model has only "
                                f"{below} layer groups below the head; use all or a "
                                f"smaller number")
        rest = phase.epochs - last * phase.step_epochs
        if rest < 1:
            raise PipelineError(f"train.phases[{i}].epochs = {phase.epochs} is too few for "
                                f"{last} steps of {phase.step_epochs} epochs and a last "
                                f"one: give more than {last * phase.step_epochs}")
        steps = [replace(phase, epochs=phase.step_epochs, unfreeze=n or "head",
                         step_epochs=0, until="all") for n in range(last)]
        steps.append(replace(phase, epochs=rest, unfreeze=phase.until, step_epochs=0,
                             until="all"))
        phases.extend(steps)
        notes.append(f"train.phases[{i}] gradual: " + ", ".join(
            f"{p.epochs} x {p.unfreeze}" for p in steps))
    return replace(cfg, phases=tuple(phases)), notes


def check_phases(cfg: TrainConfig, groups: list[LayerGroup]) -> list[tuple[int, ...]]:
    """Indices of the trainable groups per phase, or a clear error before training (a
    count past the model, an unknown group name in ``unfreeze`` or ``lrs``). Expand
    gradual phases first (:func:`expand_gradual`)."""
    names = [g.name for g in groups]
    trainable = []
    for i, phase in enumerate(cfg.phase_list):
        try:
            trainable.append(trainable_indices(phase.unfreeze, groups))
        except PipelineError as exc:
            raise PipelineError(f"train.phases[{i}].{exc}") from None
        unknown = [n for n in phase.lrs if n not in names and n != "default"]
        if unknown:
            raise PipelineError(f"train.phases[{i}].lrs names {', '.join(map(repr, unknown))}"
                                f", which is no layer group; valid names: default, "
                                f"{', '.join(names)}")
    return trainable
