"""The training run in named parts: set-up, loop state, checkpointer, phase and epoch.

The train stage strings them together (:mod:`pipeline.stages.train`); a benchmark or an
LR finder calls :func:`build_setup` and :func:`run_epoch` instead of copying the stage.
Structured like timm's ``train.py`` (a ``CheckpointSaver`` that owns saving and the
best state) and nanoGPT (one plain state object saved whole): the loop state is a
dataclass that the checkpoint saves and restores with every RNG state, so a killed run
resumes exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pipeline.contracts.cachefiles import ArraySplit
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path
from pipeline.core.seeding import rng_state, set_rng_state
from pipeline.finetuning.backbones import WeightsError, head_module, load_torch_file
from pipeline.finetuning.engine import (
    amp_dtype,
    autocast,
    batch_count,
    batch_indices,
    batches,
    head_inputs,
    inference_batches,
    predict,
    rows_batch,
    train_one_epoch,
)
from pipeline.finetuning.finetune import (
    Schedule,
    check_phases,
    expand_gradual,
    fit_auto_depth,
    group_lrs,
    make_optimizer,
    make_schedule,
    param_groups,
    set_lrs,
)
from pipeline.finetuning.frozen import (
    TopForward,
    check_top,
    cut_module,
    frozen_outputs,
    head_inputs_from,
)
from pipeline.finetuning.models import LayerGroup, layer_groups, set_trainable, train_mode
from pipeline.modality import BatchAdapter, BatchAugment, Rows
from pipeline.modality.models import model_kind
from pipeline.params.model import ModelConfig
from pipeline.params.train import TrainConfig
from pipeline.scoring.metrics import headline

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Mix = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# (model input, labels): a tensor, or (states, ids) for stored hidden states of texts
Batches = Iterator[tuple[Any, torch.Tensor]]

# ----------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """Everything built before the first epoch: the model and what trains it."""

    model: nn.Module
    prep: Any  # what the model kind gives (pipeline.modality.ModelKind.create)
    weights_info: dict[str, Any]
    groups: list[LayerGroup]
    trainable: list[tuple[int, ...]]  # indices of the trainable groups per phase
    head: nn.Module
    forward: nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: Any  # timm ModelEmaV3, or None
    loss_fn: Loss
    mix: Mix | None
    inputs: BatchAdapter  # cached rows to model input (the modality's)
    augment: BatchAugment  # per-epoch augmentation of model input (the modality's)
    cfg: TrainConfig  # the params with gradual phases written out (finetune.expand_gradual)


def check_class_weights(cfg: TrainConfig, classes: Sequence[str]) -> None:
    """An explicit train.class_weights mapping must name classes of the data."""
    if isinstance(cfg.class_weights, dict):
        unknown = [name for name in cfg.class_weights if name not in classes]
        if unknown:
            raise PipelineError(f"train.class_weights names {', '.join(map(repr, unknown))}"
                                f", which is no class of the data; valid names: "
                                f"{', '.join(classes)}")


def class_weights(cfg: TrainConfig, labels: np.ndarray | None, num_classes: int, *,
                  classes: Sequence[str] | None = None) -> torch.Tensor | None:
    """(C,) float32 loss weights for train.class_weights: balanced is scikit-learn's
    ``n / (classes x count)`` over the classes in the train labels (absent ones get 1,
    never used); a mapping gives its classes' weights by name (``classes``, in index
    order) and 1 to the rest; None for none."""
    if cfg.class_weights == "none":
        return None
    if isinstance(cfg.class_weights, dict):
        if classes is None:
            raise PipelineError("train.class_weights by name needs the class names")
        check_class_weights(cfg, classes)
        return torch.tensor([cfg.class_weights.get(name, 1.0) for name in classes],
                            dtype=torch.float32)
    if labels is None:
        raise PipelineError("train.class_weights balanced needs the train labels")
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


def check_head_batches(model_cfg: ModelConfig, n: int, batch_size: int, world: int = 1
                       ) -> None:
    """A BatchNorm in the new head (model.head.norm) cannot train on a batch of one image:
    fail before training when a rank's share of some batch would be one."""
    if model_cfg.head.norm != "batchnorm" or not model_cfg.head.hidden:
        return
    last = n % batch_size
    shares = [batch_size // world] + ([last // world] if last >= world else [])
    if min(shares) < 2:
        raise PipelineError(f"model.head.norm batchnorm needs at least 2 images in every "
                            f"batch on each process; {n} train images in batches of "
                            f"{batch_size} over {world} process(es) leave one: change "
                            f"train.batch_size or use layernorm")


def soft_cross_entropy(weight: torch.Tensor) -> Loss:
    """Cross-entropy on soft targets (mixup, cutmix) with class weights, normalised like
    ``nn.CrossEntropyLoss(weight)``: sum of w_c t_ic (-log p_ic) / sum of w_c t_ic."""
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = target * weight.to(logits.device)  # (B, C)
        return -(w * torch.log_softmax(logits.float(), dim=1)).sum() / w.sum()
    return loss


def make_loss(cfg: TrainConfig, num_classes: int, weight: torch.Tensor | None = None
              ) -> tuple[Loss, Mix | None]:
    """The loss (weighted per class when ``weight``, (C,), is given) and, with mixup or
    cutmix, the batch mixer that makes its soft targets."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing), None
    from timm.data.mixup import Mixup, mixup_target
    from timm.loss import SoftTargetCrossEntropy

    mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                  switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes)

    def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:  # timm mixes pairs: an odd batch trains unmixed
            return x, mixup_target(y, num_classes, smoothing=cfg.label_smoothing)
        return mixer(x, y)

    loss = SoftTargetCrossEntropy() if weight is None else soft_cross_entropy(weight)
    return loss, mix


def build_setup(model_cfg: ModelConfig, cfg: TrainConfig, num_classes: int,
                device: torch.device, *, verbose: bool = True,
                train_labels: np.ndarray | None = None,
                classes: Sequence[str] | None = None, modality: str = "image") -> Setup:
    """Model with pretrained weights and a new head, layer groups, gradual phases written
    out, optimizer, scaler, EMA and loss (``train_labels`` and the ``classes`` names for
    train.class_weights); a bad schedule fails here, before any work. Seed first: the new
    head's initial weights come from torch's global generator."""
    model, prep, weights_info, inputs, augment = modality_model(model_cfg, num_classes,
                                                                modality, verbose)
    groups = layer_groups(model)
    cfg, fitted = fit_auto_depth(cfg, groups)
    cfg, notes = expand_gradual(cfg, groups)
    notes = fitted + notes
    trainable = check_phases(cfg, groups)
    if verbose:
        print(f"{len(groups)} layer groups, stem to head:")
        for i, g in enumerate(groups):
            print(f"  {i:2d} {g.name:<32} {g.size:>12,} parameters")
        for note in notes:
            print(note)
    model.to(device).to(memory_format=torch.channels_last)  # see inputs.to_input
    head = head_module(model)
    optimizer = make_optimizer(cfg, param_groups(model, groups, cfg.weight_decay))
    scaler = torch.amp.GradScaler(device.type,
                                  enabled=amp_dtype(device, cfg.amp) == torch.float16)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    forward: Any = torch.compile(model) if cfg.compile else model
    weight = class_weights(cfg, train_labels, num_classes, classes=classes)
    if verbose and weight is not None:
        print("class weights: " + ", ".join(
            f"{name} {w:.3g}" for name, w in zip(classes or map(str, range(num_classes)),
                                                  weight.tolist())))
    loss_fn, mix = make_loss(cfg, num_classes, None if weight is None else weight.to(device))
    return Setup(model, prep, weights_info, groups, trainable, head, forward, optimizer,
                 scaler, ema, loss_fn, mix, inputs, augment, cfg)


def modality_model(model_cfg: ModelConfig, num_classes: int, modality: str, verbose: bool
                   ) -> tuple[nn.Module, Any, dict[str, Any], BatchAdapter, BatchAugment]:
    """The model with its new head, the input preprocessing, the weights' description,
    and the modality's batch adapter and augmentation (the cache's meta names it)."""
    kind = model_kind(modality)
    model, prep, info = kind.create(model_cfg, num_classes, verbose=verbose)
    return model, prep, info, kind.adapter(model, prep), kind.augment


# ----------------------------------------------------------------------------- loop state


@dataclass
class LoopState:
    """Where the run is; saved whole in every checkpoint (as plain data, weights_only)."""

    phase: int = 0  # index into train.phases
    phase_epoch: int = 0  # epochs done in this phase
    epoch: int = 0  # epochs done in all
    best: dict[str, Any] | None = None  # validation scores of the kept epoch, + epoch, phase, why
    peak: dict[str, Any] | None = None  # the epoch with the best monitored score so far
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # its weights (CPU)
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    timing: dict[str, float] = field(default_factory=dict)  # phase{p}_seconds
    phase_best: dict[str, float] | None = None  # best validation of this phase
    since_best: int = 0  # epochs of this phase without gain
    stopped: bool = False  # early stop: the phase ends (patience_scope run: the run)
    since_run_best: int = 0  # epochs without a new best of the run (patience_scope run)

    def as_dict(self) -> dict[str, Any]:
        """Shallow plain-data copy for the checkpoint (tensors stay tensors)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def next_phase(self) -> None:
        """Move to the next phase's first epoch."""
        self.phase += 1
        self.phase_epoch, self.phase_best, self.since_best, self.stopped = 0, None, 0, False


@dataclass(frozen=True)
class Monitor:
    """The metric that picks the best epoch (train.monitor) and how to compare two."""

    metric: str

    @property
    def mode(self) -> Literal["min", "max"]:
        return "min" if self.metric == "val_loss" else "max"

    def better(self, new: dict[str, float], old: dict[str, float] | None) -> bool:
        """A higher (lower) monitored metric; on a tie, the lower val loss."""
        if old is None:
            return True
        sign = -1.0 if self.mode == "min" else 1.0
        return (sign * new[self.metric], -new["val_loss"]) > \
            (sign * old[self.metric], -old["val_loss"])

    def noise(self, scores: dict[str, float]) -> float:
        """One standard error of the monitored metric on the val split, at least one val
        row for accuracy and macro-F1 (whose error is taken as accuracy's): with 100 val
        images accuracy moves in steps of 0.01, which says nothing about the model."""
        if self.metric == "val_loss":
            return scores["val_loss_se"]
        n, p = scores["val_n"], scores[self.metric]
        return max(float(np.sqrt((p * (1 - p) + 1 / (4 * n)) / n)), 1 / n)

    def keep(self, new: dict[str, float], peak: dict[str, Any] | None, select: str
             ) -> str | None:
        """Why the new epoch replaces the kept one, or None. ``select`` best: only a better
        score; latest_within_se: also a later epoch within :meth:`noise` of the best score
        so far (the one-standard-error rule, leaning to the more trained model)."""
        if self.better(new, peak):
            return f"the best {self.metric} so far"
        assert peak is not None
        sign = -1.0 if self.mode == "min" else 1.0
        gap, noise = sign * (peak[self.metric] - new[self.metric]), self.noise(peak)
        if select == "latest_within_se" and gap <= noise + 1e-12:
            return (f"{self.metric} {new[self.metric]:.4f} is within one standard error "
                    f"({noise:.4f}) of the best, {peak[self.metric]:.4f} at epoch "
                    f"{peak['epoch']}: the later, more trained epoch is kept")
        return None


# ----------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Owns ``last.pt``: the fingerprint a resumable checkpoint must carry, atomic saves,
    resuming, and the best epoch's weights."""

    NAME = "last.pt"

    def __init__(self, directory: Path, identity: Sequence[Any]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        # what a checkpoint must have been made with: params, data, world size, torch
        blob = json.dumps([*identity, torch.__version__], sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when absent, made with other params or data, or
        unreadable (then renamed to ``last.pt.corrupt``, so the next run starts afresh)."""
        if not self.path.exists():
            return None
        try:
            state = load_torch_file(self.path)
            problem = "" if isinstance(state, dict) else f"{self.path} holds no checkpoint"
        except WeightsError as exc:
            problem = str(exc)
        if problem:  # a kill cannot cause this (saves are atomic): a copy, a bad disk
            aside = self.path.with_name(self.NAME + ".corrupt")
            os.replace(self.path, aside)
            print(f"{problem}: set aside as {aside}, training afresh")
            return None
        if state.get("fingerprint") != self.key:
            print(f"{self.path} was written with other params or data: starting afresh")
            return None
        return state

    def restore(self, setup: Setup, order: torch.Generator, augment_rng: torch.Generator
                ) -> tuple[LoopState, dict[str, Any] | None]:
        """The loop state to start from (and the raw checkpoint, whose schedule state the
        interrupted phase needs); model, optimizer, scaler, EMA and RNGs restored."""
        resume = self.load()
        if resume is None:
            return LoopState(), None
        setup.model.load_state_dict(resume["model"])
        setup.optimizer.load_state_dict(resume["optimizer"])
        setup.scaler.load_state_dict(resume["scaler"])
        if setup.ema is not None:
            setup.ema.module.load_state_dict(resume["ema"])
        set_rng_state(resume["rng"], order)
        augment_rng.set_state(resume["augment_rng"])
        loop = LoopState(**resume["loop"])
        print(f"resuming {self.path}: phase {loop.phase}, epoch {loop.epoch}")
        return loop, resume

    def keep_best(self, loop: LoopState, val: dict[str, float], scored: nn.Module,
                  monitor: Monitor, phase: int, select: str) -> None:
        """Keep this epoch's weights when :meth:`Monitor.keep` says so, with the reason."""
        scores = {**val, "epoch": loop.epoch, "phase": phase}
        why = monitor.keep(val, loop.peak, select)
        if monitor.better(val, loop.peak):
            loop.peak = scores
        if why is not None:
            loop.best = {**scores, "why": why}
            loop.best_state = {k: v.detach().cpu().clone()
                               for k, v in scored.state_dict().items()}

    def save(self, setup: Setup, schedule: Schedule, loop: LoopState, order: torch.Generator,
             augment_rng: torch.Generator) -> None:
        """Write every state a resumed run needs, atomically: a kill mid-write leaves the
        previous checkpoint intact."""
        state = {
            "fingerprint": self.key, "model": setup.model.state_dict(),
            "optimizer": setup.optimizer.state_dict(), "schedule": schedule.state_dict(),
            "scaler": setup.scaler.state_dict(),
            "ema": setup.ema.module.state_dict() if setup.ema is not None else None,
            "rng": rng_state(order), "augment_rng": augment_rng.get_state(),
            "loop": loop.as_dict()}
        with atomic_path(self.path) as partial:
            torch.save(state, partial)

    def finish(self) -> None:
        """The run finished: a forced rerun trains afresh."""
        self.path.unlink(missing_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "README.txt").write_text(
            "A killed train stage leaves last.pt here; the next run resumes from it.\n")


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """What every phase and epoch of one run shares."""

    cfg: TrainConfig
    setup: Setup
    train_views: list[ArraySplit]  # epoch e reads view e mod K
    val: ArraySplit
    device: torch.device
    order: torch.Generator  # batch order
    augment_rng: torch.Generator  # flips and shifts
    checkpointer: Checkpointer
    log: Callable[[dict[str, Any]], None]  # one epoch's record to the curves
    rank: int = 0
    world: int = 1
    cuts: dict[int, str | None] = field(default_factory=dict)  # per phase: frozen_cut's
    # stored outputs of a cut module, by (cut, view index or "val", mirrored): the head
    # phase fills them for the partial phase after it, which then trains from them
    frozen: dict[tuple[str, int | str, bool], torch.Tensor] = field(default_factory=dict)

    @property
    def monitor(self) -> Monitor:
        return Monitor(self.cfg.monitor)

    @property
    def steps(self) -> int:
        """Batches per epoch, each rank."""
        return batch_count(len(self.train_views[0].labels), self.cfg.batch_size, self.world)


@dataclass
class PhaseRun:
    """One phase's fixed parts: what trains, on what, with which schedule."""

    index: int
    epochs: int
    trainable: int  # trainable parameters
    schedule: Schedule
    use_features: bool  # head only, on stored backbone features
    net: nn.Module
    # per view: (1, N, D), or (2, N, D) with the mirrored rows' features when hflip is on
    features: dict[int, torch.Tensor] = field(default_factory=dict)
    val_features: torch.Tensor | None = None  # (N, D) of the val split, computed once
    # texts whose lower layers are frozen: the layer whose input is stored per view
    # ((N, L, D) hidden states, with the (N, L) token ids), or None
    states_from: int | None = None
    states: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    val_states: tuple[torch.Tensor, torch.Tensor] | None = None
    # images whose lower groups are frozen: the module whose output is stored per view
    # (in ``features``, as the head's features are) and the top trains from
    cut: str | None = None


def _val_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Val loss, accuracy and macro-F1, with the val size and the loss's standard error
    (which :class:`Monitor` weighs differences by; kept out of the curves)."""
    scores = headline(labels, probs)
    losses = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1))
    return {"val_loss": scores["log_loss"], "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"], "val_n": float(len(labels)),
            "val_loss_se": float(losses.std() / np.sqrt(len(labels)))}


NOISE_KEYS = ("val_n", "val_loss_se")  # in the val scores, not in the epoch's record


def validate(run: Run, phase: PhaseRun) -> dict[str, float]:
    """Loss, accuracy and macro-F1 on the val split: in head-only phases from its stored
    backbone features (the frozen backbone gives the same ones every epoch)."""
    s, cfg = run.setup, run.cfg
    kwargs: dict[str, Any] = dict(device=run.device, batch_size=cfg.batch_size,
                                  amp=cfg.amp, inputs=s.inputs)
    if phase.states_from is not None and s.ema is None:
        return validate_states(run, phase)
    stored = phase.use_features or phase.cut is not None
    if not stored or s.ema is not None:
        scored = s.ema.module if s.ema is not None else s.model
        return _val_scores(run.val.labels, predict(scored, run.val, **kwargs))
    if phase.val_features is None:
        phase.val_features = stored_inputs(run, phase, run.val, "val", mirror=False)
    top = s.head if phase.cut is None else TopForward(s.model, phase.cut, probe_rows(run))
    s.model.eval()
    with torch.no_grad():
        logits = []
        for x in phase.val_features.split(cfg.batch_size):
            with autocast(run.device, cfg.amp):
                logits.append(top(x))
    probs = torch.softmax(torch.cat(logits).float(), dim=1).cpu().double().numpy()
    return _val_scores(run.val.labels, probs)


def sample_weights(cfg: TrainConfig, labels: np.ndarray) -> np.ndarray | None:
    """(N,) float64 draw weights for train.sampler balanced (1 / the row's class count,
    so every class is drawn equally often); None otherwise (a permutation)."""
    if cfg.sampler != "balanced":
        return None
    return 1.0 / np.bincount(labels)[labels]


def group_lengths(cfg: TrainConfig, inputs: BatchAdapter, rows: Rows | torch.Tensor
                  ) -> np.ndarray | None:
    """(N,) lengths to batch by for train.sampler by_length, else None."""
    if cfg.sampler != "by_length":
        return None
    return inputs.lengths(rows.cpu().numpy() if isinstance(rows, torch.Tensor) else rows)


def input_batches(run: Run, data: ArraySplit) -> Batches:
    """Shuffled (or class-balanced), augmented, model-ready batches of one cached view."""
    cfg, device, s = run.cfg, run.device, run.setup
    for rows, labels in batches(data, cfg.batch_size, generator=run.order, rank=run.rank,
                                world=run.world, pin=device.type == "cuda",
                                weights=sample_weights(cfg, data.labels),
                                lengths=group_lengths(cfg, s.inputs, data.images)):
        yield s.augment(s.inputs.to_input(rows, device), hflip=cfg.flips, shift=cfg.shift,
                        generator=run.augment_rng), labels


def feature_batches(run: Run, feats: torch.Tensor, labels: np.ndarray) -> Batches:
    """Shuffled batches of stored backbone features (head-only phases); with mirrored
    features stored, each row is its mirror image with probability 1/2 (train.hflip)."""
    for index in batch_indices(len(labels), run.cfg.batch_size, generator=run.order,
                               rank=run.rank, world=run.world,
                               weights=sample_weights(run.cfg, labels)):
        rows = torch.from_numpy(index)
        flips = torch.zeros(len(rows), dtype=torch.long)
        if len(feats) == 2:
            # the draw image.model.random_flip_shift makes: the same flips as the image path
            flips = (torch.rand(len(rows), generator=run.augment_rng) < 0.5).long()
        yield feats[flips.to(feats.device), rows.to(feats.device)], torch.from_numpy(labels[index])


def feature_cache_off(cfg: TrainConfig) -> list[str]:
    """Settings that change the inputs every epoch, so stored features cannot serve
    (hflip can: the mirrored rows' features are stored too)."""
    return [n for n, on in (("shift", cfg.shift > 0),
                            ("mixup", cfg.mixup > 0), ("cutmix", cfg.cutmix > 0)) if on]


def start_phase(run: Run, loop: LoopState, resume: dict[str, Any] | None) -> PhaseRun:
    """Freeze and unfreeze, set the phase's learning rates and schedule (restored when a
    killed run resumes mid-phase), and pick images or stored features."""
    cfg, s, p = run.cfg, run.setup, loop.phase
    phase, indices = cfg.phase_list[p], s.trainable[p]
    trainable = set_trainable(s.model, s.groups, indices)
    lrs = group_lrs(cfg, phase, [g.name for g in s.groups], indices)
    set_lrs(s.optimizer, lrs)
    schedule = make_schedule(s.optimizer, cfg, phase,
                             steps_per_epoch=-(-run.steps // cfg.accumulate),
                             mode=run.monitor.mode)
    if resume is not None and loop.phase_epoch > 0:  # killed mid-phase
        s.optimizer.load_state_dict(resume["optimizer"])  # the lrs where it stopped
        schedule.load_state_dict(resume["schedule"])
    reasons = feature_cache_off(cfg)
    head_only = len(indices) == 1
    use_features = head_only and cfg.feature_cache and not reasons
    if run.rank == 0:
        print(f"phase {p}: {len(indices)} of {len(s.groups)} layer groups trainable "
              f"({trainable:,} parameters), head lr {lrs[-1]:g}, lowest trained lr "
              f"{lrs[indices[0]]:g}, {phase.schedule or cfg.schedule}, "
              f"{phase.epochs} epochs" + (", on stored backbone features"
                                          if use_features else ""))
        if head_only and cfg.feature_cache and reasons:
            print(f"  feature cache off: {', '.join(reasons)} change the inputs every epoch")
    net: nn.Module = s.head if use_features else s.forward
    states_from = None if head_only or reasons else stored_states_from(run)
    cut = None if states_from is not None else phase_cut(run, p)
    run.frozen = {k: v for k, v in run.frozen.items() if k[0] == cut}  # done with the rest
    if states_from is not None:
        from pipeline.modality.text.model import StatesForward

        net = StatesForward(s.model, states_from)  # type: ignore[arg-type]
    if cut is not None:
        net = TopForward(s.model, cut, probe_rows(run))
    if run.world > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return PhaseRun(p, phase.epochs, trainable, schedule, use_features, net,
                    states_from=states_from, cut=cut)


def probe_rows(run: Run, n: int = 1) -> torch.Tensor:
    """The first ``n`` train rows as model input."""
    data = run.train_views[0]
    rows, _ = rows_batch(data, np.arange(min(n, len(data.labels))))
    return run.setup.inputs.to_input(rows, run.device)


def phase_cut(run: Run, p: int) -> str | None:
    """Phase ``p``'s :func:`frozen_cut` (worked out once: the head phase before it asks
    too), None for head-only phases and when the inputs change every epoch."""
    if p not in run.cuts:
        indices = run.setup.trainable[p]
        partial = len(indices) > 1 and not feature_cache_off(run.cfg)
        run.cuts[p] = frozen_cut(run, indices, p) if partial else None
    return run.cuts[p]


def frozen_cut(run: Run, indices: tuple[int, ...], p: int) -> str | None:
    """For an image model whose lower groups are frozen: the module whose output the
    phase stores once per view (:mod:`pipeline.finetuning.frozen`, ``train.feature_cache``);
    None when off, compiled, a text model (its own store), over :data:`STATES_BUDGET`,
    or when the model's top cannot run from that output. Says which, and the size."""
    from pipeline.modality.text.model import TextClassifier

    s, cfg = run.setup, run.cfg
    if not cfg.feature_cache or cfg.compile or isinstance(s.model, TextClassifier):
        return None
    cut = cut_module(s.model, s.groups, indices[0])
    if cut is None:
        return None
    say = print if run.rank == 0 else (lambda *_: None)
    shape = check_top(s.model, cut, probe_rows(run, 8))
    if shape is None:
        say(f"  phase {p}: frozen layers not stored: the model above {cut} also reads what comes "
            f"before it; the frozen layers run every step")
        return None
    size = len(run.train_views[0].labels) * int(np.prod(shape)) * 4 * (1 + cfg.flips)
    if size > STATES_BUDGET:
        say(f"  phase {p}: frozen layers not stored: {size / 2**30:.1f} GiB would exceed "
            f"{STATES_BUDGET / 2**30:.0f} GiB; they run every step")
        return None
    say(f"  phase {p} trains on stored outputs of {cut} ({tuple(shape)} per image, "
        f"{size / 2**20:,.0f} MB per view{' with mirrors' if cfg.flips else ''}): the "
        f"{indices[0]} frozen groups below run once per view, not every step")
    return cut


STATES_BUDGET = 4 * 2**30  # bytes of stored hidden states per view, at most


def stored_states_from(run: Run) -> int | None:
    """For a text model whose embeddings and lower layers are frozen: the first trained
    layer, whose input the phase stores once per view (``train.feature_cache``); None
    for images, torch.compile runs, states over :data:`STATES_BUDGET`, or when the
    embeddings train."""
    from pipeline.modality.text.model import TextClassifier, hidden_size

    model, cfg, view = run.setup.model, run.cfg, run.train_views[0]
    if not (isinstance(model, TextClassifier) and cfg.feature_cache) or cfg.compile:
        return None
    start = model.first_trained_layer()
    size = len(view.labels) * int(np.prod(view.images.shape[1:])) * hidden_size(model.encoder) * 4
    if start is not None and size > STATES_BUDGET:
        if run.rank == 0:
            print(f"  hidden states not stored: {size / 2**30:.1f} GiB would exceed "
                  f"{STATES_BUDGET / 2**30:.0f} GiB; the frozen layers run every step")
        return None
    if start is not None and run.rank == 0:
        print(f"  on stored hidden states: the {start} frozen layers below layer {start} "
              f"run once per view, not every step")
    return start


def run_phase(run: Run, loop: LoopState, resume: dict[str, Any] | None) -> None:
    """Train one phase to its last epoch (or early stop), checkpointing after each."""
    phase = start_phase(run, loop, resume)
    while loop.phase == phase.index:
        run_epoch(run, loop, phase)
        if run.rank == 0:
            run.checkpointer.save(run.setup, phase.schedule, loop, run.order, run.augment_rng)


def train_phases(run: Run, loop: LoopState, resume: dict[str, Any] | None) -> None:
    """Every phase from where ``loop`` stands."""
    while loop.phase < len(run.cfg.phase_list):
        run_phase(run, loop, resume)
        resume = None


def epoch_batches(run: Run, phase: PhaseRun, data: ArraySplit, view: int
                  ) -> tuple[Batches, float]:
    """This epoch's batches, and the seconds spent storing the view's features first."""
    if phase.states_from is not None:
        return state_batches(run, phase, data, view)
    if not phase.use_features and phase.cut is None:
        return input_batches(run, data), 0.0
    extra = 0.0
    if view not in phase.features:
        reused = all((phase.cut, view, m) in run.frozen for m in (False, True)[:1 + run.cfg.flips])
        start = time.perf_counter()
        phase.features[view] = torch.stack([stored_inputs(run, phase, data, view, mirror=mirror)
                                            for mirror in (False, True)[:1 + run.cfg.flips]])
        extra = time.perf_counter() - start
        if phase.cut is not None and run.rank == 0 and not reused:
            mb = phase.features[view].element_size() * phase.features[view].numel() / 2**20
            print(f"  stored outputs of {phase.cut} for view {view}: {mb:,.0f} MB in "
                  f"{extra:.1f} s")
    return feature_batches(run, phase.features[view], data.labels), extra


def stored_inputs(run: Run, phase: PhaseRun, data: ArraySplit, key: int | str, *,
                  mirror: bool) -> torch.Tensor:
    """What a phase on stored inputs trains from, for every row of ``data`` (view
    ``key`` or "val"): the frozen groups' output (``phase.cut``) or the backbone's
    features (head only). A head phase before a partial phase with a cut stores that cut's
    output on the way (:data:`Run.frozen`), so the frozen groups run once for both."""
    s, cfg = run.setup, run.cfg
    kwargs: dict[str, Any] = dict(device=run.device, batch_size=cfg.batch_size, amp=cfg.amp,
                                  inputs=s.inputs, mirror=mirror)
    following = phase.index + 1 < len(cfg.phase_list) and phase_cut(run, phase.index + 1)
    cut = phase.cut or following or None
    if cut is None:
        return head_inputs(s.model, s.head, data, **kwargs)
    if (cut, key, mirror) not in run.frozen:
        run.frozen[cut, key, mirror] = frozen_outputs(s.model, cut, data, **kwargs)
    if phase.cut is not None:
        return run.frozen[cut, key, mirror]
    return head_inputs_from(s.model, s.head, cut, run.frozen[cut, key, mirror],
                            probe_rows(run), batch_size=cfg.batch_size,
                            device=run.device, amp=cfg.amp)


def store_states(run: Run, phase: PhaseRun, data: ArraySplit
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, L, D) hidden states entering layer ``phase.states_from``, (N, L) ids) of
    every row, the frozen layers in eval mode (as :func:`pipeline.finetuning.models.train_mode`
    keeps them; the caller restores the modes). Computed longest texts first, so each
    batch is cut to similar lengths; stored in row order."""
    s, start = run.setup, phase.states_from
    assert start is not None
    s.model.eval()
    stream, order = inference_batches(data, run.cfg.batch_size, s.inputs)
    pad = s.inputs.pad_id  # type: ignore[attr-defined]
    states = ids = torch.zeros(0)
    done = 0
    for rows, _ in stream:
        x = s.inputs.to_input(rows, run.device)
        h = s.model.states(x, start)  # type: ignore[operator]
        if not done:  # the longest batch comes first: its width is every row's
            states = h.new_zeros((len(order), *h.shape[1:]))
            ids = x.new_full((len(order), x.shape[1]), pad)
        index = torch.from_numpy(order[done:done + len(x)]).to(h.device)
        states[index, :h.shape[1]] = h
        ids[index, :x.shape[1]] = x
        done += len(x)
    return states, ids


def state_batches(run: Run, phase: PhaseRun, data: ArraySplit, view: int
                  ) -> tuple[Batches, float]:
    """Batches of ((B, L, D) stored hidden states, (B, L) ids), each cut to its longest
    text, and the seconds spent storing the view's states first."""
    from pipeline.modality.text.model import used_width

    cfg, pad, extra = run.cfg, run.setup.inputs.pad_id, 0.0  # type: ignore[attr-defined]
    if view not in phase.states:
        start = time.perf_counter()
        phase.states[view] = store_states(run, phase, data)
        extra = time.perf_counter() - start
        if run.rank == 0:
            mb = phase.states[view][0].element_size() * phase.states[view][0].numel() / 2**20
            print(f"  stored hidden states of view {view}: {mb:,.0f} MB in {extra:.1f} s")
    states, ids = phase.states[view]

    def stream() -> Batches:
        for index in batch_indices(len(data.labels), cfg.batch_size, generator=run.order,
                                   rank=run.rank, world=run.world,
                                   weights=sample_weights(cfg, data.labels),
                                   lengths=group_lengths(cfg, run.setup.inputs, ids)):
            rows = torch.from_numpy(index).to(ids.device)
            batch = ids[rows]
            width = used_width(batch, pad)
            yield (states[rows, :width], batch[:, :width]), torch.from_numpy(data.labels[index])
    return stream(), extra


def validate_states(run: Run, phase: PhaseRun) -> dict[str, float]:
    """Val scores from the val split's stored hidden states (computed once per phase)."""
    from pipeline.modality.text.model import StatesForward, used_width

    s, pad = run.setup, run.setup.inputs.pad_id  # type: ignore[attr-defined]
    assert phase.states_from is not None
    if phase.val_states is None:
        phase.val_states = store_states(run, phase, run.val)
    states, ids = phase.val_states
    top = StatesForward(s.model, phase.states_from)  # type: ignore[arg-type]
    s.model.eval()
    lengths = s.inputs.lengths(ids.cpu().numpy())
    assert lengths is not None
    order = torch.from_numpy(np.argsort(-lengths, kind="stable")).to(ids.device)
    logits = []
    with torch.no_grad():
        for start in range(0, len(ids), run.cfg.batch_size):
            rows = order[start:start + run.cfg.batch_size]
            batch = ids[rows]
            width = used_width(batch, pad)
            logits.append(top((states[rows, :width], batch[:, :width])))
    out = torch.cat(logits)[torch.argsort(order)]
    probs = torch.softmax(out.float(), dim=1).cpu().double().numpy()
    return _val_scores(run.val.labels, probs)


def run_epoch(run: Run, loop: LoopState, phase: PhaseRun) -> dict[str, Any]:
    """One pass over a training view, validation, best-state and early-stop bookkeeping;
    returns the epoch's record (also in ``loop.history``)."""
    cfg, s, p = run.cfg, run.setup, phase.index
    view = loop.epoch % len(run.train_views)
    data = run.train_views[view]
    stream, extra = epoch_batches(run, phase, data, view)
    train_mode(s.model, bn=cfg.bn)

    def on_step(schedule: Schedule = phase.schedule) -> None:
        schedule.batch.step()
        if s.ema is not None:
            s.ema.update(s.model)

    stats = train_one_epoch(
        phase.net, stream, steps=run.steps, optimizer=s.optimizer, on_step=on_step,
        loss_fn=s.loss_fn, device=run.device, amp=cfg.amp, scaler=s.scaler,
        accumulate=cfg.accumulate, clip_grad=cfg.clip_grad,
        mix=None if phase.use_features else s.mix, desc=f"epoch {loop.epoch + 1}")
    totals = torch.tensor([stats["loss_sum"], stats["seen"], stats["correct"]],
                          dtype=torch.float64)
    if run.world > 1:
        dist.all_reduce(totals)
    train_loss, train_accuracy = float(totals[0] / totals[1]), float(totals[2] / totals[1])
    val = validate(run, phase)
    scored = s.ema.module if s.ema is not None else s.model
    if phase.schedule.plateau is not None:
        phase.schedule.plateau.step(val[cfg.monitor])
    loop.epoch += 1
    loop.phase_epoch += 1
    seconds = stats["seconds"] + extra
    add_phase_time(loop, p, seconds)
    shown = {k: v for k, v in val.items() if k not in NOISE_KEYS}
    record = {"train_loss": train_loss, "train_accuracy": train_accuracy, **shown, "phase": p,
              "trainable_params": phase.trainable, **lr_record(s.optimizer)}
    loop.history.append(record)
    run.log(record)
    end_of_epoch(run, loop, phase, val, scored)
    if run.rank == 0:
        print(f"epoch {loop.epoch} (phase {p}): train loss {train_loss:.4f}, train "
              f"accuracy {train_accuracy:.4f}, val loss {val['val_loss']:.4f}, val accuracy "
              f"{val['val_accuracy']:.4f}, macro-F1 {val['val_macro_f1']:.4f}, "
              f"{len(data.labels) / seconds:.0f} images/s" + stop_note(run.cfg, loop))
    if loop.phase_epoch == phase.epochs or loop.stopped:
        end_run = loop.stopped and run.cfg.patience_scope == "run"
        loop.next_phase()
        if end_run:
            loop.phase = len(run.cfg.phase_list)
    return record


def end_of_epoch(run: Run, loop: LoopState, phase: PhaseRun, val: dict[str, float],
                 scored: nn.Module) -> None:
    """Keep the best weights; count epochs without gain in the phase and in the run;
    early stop when train.patience runs out in train.patience_scope."""
    monitor, patience = run.monitor, run.cfg.patience
    loop.since_run_best = 0 if monitor.better(val, loop.peak) else loop.since_run_best + 1
    run.checkpointer.keep_best(loop, val, scored, monitor, phase.index, run.cfg.select)
    if monitor.better(val, loop.phase_best):
        loop.phase_best, loop.since_best = val, 0
    else:
        loop.since_best += 1
    since = loop.since_best if run.cfg.patience_scope == "phase" else loop.since_run_best
    loop.stopped = 0 < patience <= since


def stop_note(cfg: TrainConfig, loop: LoopState) -> str:
    """The epoch log line's ending when early stopping ends the phase or the run."""
    if not loop.stopped:
        return ""
    if cfg.patience_scope == "run":
        return f"; no gain over the run's best for {loop.since_run_best} epochs: run ends"
    return f"; no gain for {loop.since_best} epochs: phase ends"


def lr_record(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of each layer group, as ``lr/<layer>_<name>`` curve names."""
    record: dict[str, float] = {}
    for pg in optimizer.param_groups:
        record.setdefault(f"lr/{pg['layer']:02d}_{pg['name']}", pg["lr"])
    return record


def add_phase_time(loop: LoopState, phase: int, seconds: float) -> None:
    """Add an epoch's wall time (training pass, not validation) to its phase."""
    key = f"phase{phase}_seconds"
    loop.timing[key] = loop.timing.get(key, 0.0) + seconds
