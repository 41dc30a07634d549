"""The training run of the train stage (and of ensemble members and folds): fine-tune the
backbone on the cache in phases and save the best model (:mod:`pipeline.contracts.modelfile`).

``train.phases`` is the schedule: each phase trains the head plus some layer groups
below it (``head``, an integer, ``all``, a list of group names, or ``gradual``) with
discriminative learning rates (``train.lr * lr_mult * layer_decay ** depth``, or
explicit ``lrs`` per group), a linear warmup and then its schedule.
Frozen groups keep their weights and BatchNorm statistics; while only the head trains,
it trains on backbone features computed once (``train.feature_cache``). A checkpoint
after every epoch lets a killed run resume exactly; the best epoch by ``train.monitor``
becomes the model. Runs under ``torchrun`` with DistributedDataParallel too. The parts
(set-up, loop state, checkpointer, phase and epoch) are in :mod:`pipeline.finetuning.training`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from scmrepo.exceptions import SCMError

from pipeline.contracts.cachefiles import (
    ArraySplit,
    CacheMeta,
    bootstrap_rows,
    open_split,
    read_meta,
    read_meta_text,
    take_rows,
    train_views,
)
from pipeline.contracts.modelfile import save_model
from pipeline.core import paths
from pipeline.core.config import as_dict
from pipeline.core.errors import PipelineError
from pipeline.core.files import write_metrics
from pipeline.core.provenance import environment, record_run
from pipeline.core.seeding import pin_cpu, resolve_device, seed_everything
from pipeline.finetuning.backbones import check_model_config
from pipeline.finetuning.finetune import resolve_auto
from pipeline.finetuning.training import (
    Checkpointer,
    LoopState,
    Run,
    Setup,
    build_setup,
    check_class_weights,
    check_head_batches,
    train_phases,
)
from pipeline.params.base import BaseConfig
from pipeline.params.model import ModelConfig
from pipeline.params.train import TrainConfig

# what metrics/train.json keeps for dvc exp show (the epoch whose weights were kept and
# its validation score, what sweeps optimise); every number goes to
# metrics/all/train.json (pipeline.core.files.write_metrics)
HEADLINE = ("best_epoch", "best_val_accuracy")


def _live(curves_dir: Path) -> Live:
    """dvclive logger writing per-epoch curves under curves_dir (no git or dvc.yaml edits)."""
    try:
        return Live(dir=str(curves_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    except SCMError as exc:  # dvclive cannot start in a git repo without commits
        raise PipelineError(f"dvclive could not start ({exc}): commit once "
                            f"(git commit) before training") from None


def _logger(live: Live | None) -> Any:
    """One epoch's numbers to dvclive (rank 0 only: other ranks have no logger)."""
    def log(record: dict[str, Any]) -> None:
        if live is not None:
            for name, value in record.items():
                live.log_metric(name, value)
            live.next_step()
    return log


def _distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); starts the process group when run under torchrun."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def timing_metrics(loop: LoopState, phases: int, train_images: int) -> dict[str, float]:
    """Wall time of each phase's training passes (not validation) and its speed: the only
    place that turns the loop's timing into numbers. They go to the run record
    (``metrics/all/run.json``), never into a hashed output."""
    timing = {}
    for p in range(phases):
        if f"phase{p}_seconds" in loop.timing:
            seconds = loop.timing[f"phase{p}_seconds"]
            timing[f"phase{p}_seconds"] = round(seconds, 2)
            epochs = sum(record["phase"] == p for record in loop.history)
            timing[f"phase{p}_images_per_second"] = round(epochs * train_images / seconds, 1)
    return timing


def model_meta(base: BaseConfig, model_cfg: ModelConfig, cfg: TrainConfig, cache: CacheMeta,
               setup: Setup, best: dict[str, Any], env: dict[str, Any],
               auto: list[str]) -> dict[str, Any]:
    """The ``meta`` saved with the model (DESIGN.md's contract for models/model.pt);
    ``env`` is :func:`pipeline.core.provenance.environment` (versions, lock, kernels), ``auto``
    what train's ``auto`` settings resolved to (``cfg`` holds the resolved values)."""
    info = setup.weights_info
    return {
        "classes": cache.classes,
        "model": as_dict(model_cfg),
        "library": info["library"],
        "arch": info["arch"],
        "pretrained": info,
        "layer_groups": [[g.name, g.size] for g in setup.groups],
        "preprocessing": {"image_size": cache.image_size, "fit": cache.fit,
                          "mean": list(setup.prep.mean), "std": list(setup.prep.std)}
        if cache.modality == "image" else {"modality": cache.modality, **(cache.text or {})},
        "params": {"base": as_dict(base), "train": as_dict(cfg)},
        "best": best,
        "auto": auto,
        **env,
    }


def run_metrics(cfg: TrainConfig, loop: LoopState) -> dict[str, Any]:
    """metrics/all/train.json: the best epoch's scores and the epochs run (no wall times)."""
    best = loop.best
    assert best is not None
    return {f"best_{cfg.monitor}": round(best[cfg.monitor], 6),
            "best_val_accuracy": round(best["val_accuracy"], 6),
            "best_val_loss": round(best["val_loss"], 6), "best_epoch": best["epoch"],
            "epochs": loop.epoch}


def train_data(cache_dir: Path, cache: CacheMeta, cfg: TrainConfig,
               data: tuple[ArraySplit, ArraySplit] | None
               ) -> tuple[list[ArraySplit], ArraySplit, list[list[str]], dict[str, int] | None]:
    """The train views and the val split (``data`` instead, when given), the rows a
    resumable checkpoint was made on (a fold's or a bootstrap sample's; [] otherwise),
    and the bootstrap sample's size when ``train.bagging``."""
    views, val = train_views(cache_dir, cache), open_split(cache_dir, cache, "val")
    rows: list[list[str]] = []
    if data is not None:
        views, val = [data[0]], data[1]
        rows = [list(data[0].ids), list(data[1].ids)]
    bagging = None
    if cfg.bagging:  # the same bootstrap rows of every augmented view
        sample = bootstrap_rows(views[0].labels, cfg.seed)
        views = [take_rows(v, sample) for v in views]
        rows = [list(views[0].ids), list(val.ids)]
        bagging = {"rows": len(sample), "distinct": len(np.unique(sample))}
        print(f"train.bagging: a bootstrap sample of {bagging['rows']} train rows (seed "
              f"{cfg.seed}), {bagging['distinct']} distinct images")
    if len(val.labels) == 0:
        raise PipelineError("the val split is empty: give split.fractions.val > 0, it "
                            "chooses the checkpoint")
    return views, val, rows, bagging


def check_encoder(name: str, cached: str) -> None:
    """The encoder model.name gives is the one whose tokenizer made the cache's ids."""
    from pipeline.modality.text.model import text_model_name

    used = text_model_name(name)[0]
    if cached and used != cached:
        raise PipelineError(f"model.name gives the encoder {used}, but the cache holds token "
                            f"ids of {cached} (embed.model): set both to the same encoder")


def train_model(base: BaseConfig, model_cfg: ModelConfig, cfg: TrainConfig, cache_dir: Path,
        model_out: Path, metrics_out: Path, curves_dir: Path, checkpoint_dir: Path, *,
        data: tuple[ArraySplit, ArraySplit] | None = None) -> dict[str, Any]:
    """Train through every phase (resuming a killed run) and save the best model.

    ``data``: (train, val) rows of the cache to use instead of its train views and val
    split (a cross-validation fold, :func:`pipeline.contracts.cachefiles.fold_splits`)."""
    cache = read_meta(cache_dir)
    if cache.modality == "image":  # a text encoder is checked when it loads
        check_model_config(model_cfg)
    elif cache.modality == "text":  # another modality's model kind checks its own
        check_encoder(model_cfg.name, (cache.text or {}).get("encoder", ""))
    cfg, notes = resolve_auto(cfg, cache.profile,
                              text_length=int((cache.text or {}).get("max_length", 0)))
    check_class_weights(cfg, cache.classes)  # before any work
    for note in notes:
        print(note)
    views, val, rows, bagging = train_data(cache_dir, cache, cfg, data)
    rank, world, device = _distributed(base.device)
    check_head_batches(model_cfg, len(views[0].labels), cfg.batch_size, world)
    cpu = pin_cpu(deterministic=base.deterministic)  # first: kernels are chosen at first use
    order = seed_everything(cfg.seed, deterministic=base.deterministic)  # batch order
    augment_rng = torch.Generator().manual_seed(cfg.seed + 1 + rank)  # flips and shifts
    setup = build_setup(model_cfg, cfg, len(cache.classes), device, verbose=rank == 0,
                        train_labels=views[0].labels, classes=cache.classes,
                        modality=cache.modality)
    cfg = setup.cfg  # gradual phases written out: what runs, is resumed and is saved
    checkpointer = Checkpointer(checkpoint_dir, [as_dict(base), as_dict(model_cfg),
                                                 as_dict(cfg), read_meta_text(cache_dir), world,
                                                 *rows])
    loop, resume = checkpointer.restore(setup, order, augment_rng)
    live = _live(curves_dir) if rank == 0 else None
    log = _logger(live)
    for record in loop.history:  # a resumed run's curves start where it stopped
        log(record)
    train_phases(Run(cfg, setup, views, val, device, order, augment_rng, checkpointer, log,
                     rank, world), loop, resume)
    if live is not None:
        live.end()
    metrics = run_metrics(cfg, loop)
    if rank == 0:
        meta = model_meta(base, model_cfg, cfg, cache, setup, loop.best or {},
                          environment(device.type, cpu), notes)
        meta["bagging"] = bagging  # None, or the bootstrap sample's rows and distinct images
        _save(model_out, loop, meta, metrics_out, metrics)
        record_run("train", timing_metrics(loop, len(cfg.phase_list), len(cache.ids["train"])),
                   path=metrics_out.parent / paths.RUN_RECORD.name)
        checkpointer.finish()
        best = loop.best or {}
        print(f"kept epoch {best['epoch']} (phase {best['phase']}, {cfg.monitor} "
              f"{best[cfg.monitor]:.4f}): {best['why']}; saved {model_out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def _save(model_out: Path, loop: LoopState, meta: dict[str, Any], metrics_out: Path,
          metrics: dict[str, Any]) -> None:
    """The best epoch's weights with their meta, and the metrics file."""
    save_model(model_out, loop.best_state, meta)
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics_out, metrics, HEADLINE)
