"""train stage: fine-tune the backbone on the cache in phases; write models/model.pt.

``train.phases`` is the schedule: each phase trains the head plus some layer groups
below it (``head``, an integer, or ``all``) with discriminative learning rates
(``train.lr * lr_mult * layer_decay ** depth``), a linear warmup and then its schedule.
Frozen groups keep their weights and BatchNorm statistics; while only the head trains,
it trains on backbone features computed once (``train.feature_cache``). A checkpoint
after every epoch lets a killed run resume exactly; the best epoch by ``train.monitor``
becomes the model. Runs under ``torchrun`` with DistributedDataParallel too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from scmrepo.exceptions import SCMError
from torch import nn

from pipeline import paths
from pipeline.augment import random_flip_shift
from pipeline.backbones import check_model_config, create_model, head_module, library_versions
from pipeline.config import BaseConfig, ModelConfig, TrainConfig, as_dict, load_sections
from pipeline.engine import (
    ArraySplit,
    amp_dtype,
    batch_count,
    batch_indices,
    batches,
    head_inputs,
    load_split,
    predict,
    train_one_epoch,
)
from pipeline.errors import PipelineError, run_stage
from pipeline.finetune import (
    Schedule,
    check_phases,
    group_lrs,
    make_optimizer,
    make_schedule,
    param_groups,
    set_lrs,
)
from pipeline.inputs import to_input
from pipeline.metrics import headline
from pipeline.models import layer_groups, set_trainable, train_mode
from pipeline.seeding import resolve_device, rng_state, seed_everything, set_rng_state

CHECKPOINT = "last.pt"


def _live(curves_dir: Path) -> Live:
    """dvclive logger writing per-epoch curves under curves_dir (no git or dvc.yaml edits)."""
    try:
        return Live(dir=str(curves_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    except SCMError as exc:  # dvclive cannot start in a git repo without commits
        raise PipelineError(f"dvclive could not start ({exc}): commit once "
                            f"(git commit) before training") from None


def _log(live: Live | None, record: dict[str, float]) -> None:
    """One epoch's numbers to dvclive (rank 0 only: other ranks have no logger)."""
    if live is not None:
        for name, value in record.items():
            live.log_metric(name, value)
        live.next_step()


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


def validate(model: nn.Module, data: ArraySplit, **kwargs: Any) -> dict[str, float]:
    """Loss, accuracy and macro-F1 on a cached split (kwargs: engine.predict's)."""
    scores = headline(data.labels, predict(model, data, **kwargs))
    return {"val_loss": scores["log_loss"], "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"]}


def fingerprint(base: BaseConfig, model_cfg: ModelConfig, cfg: TrainConfig, cache_meta: str,
                world: int) -> str:
    """What a checkpoint must have been made with to be resumed: params, data, world size."""
    blob = json.dumps([as_dict(base), as_dict(model_cfg), as_dict(cfg), cache_meta, world,
                       torch.__version__], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != expected:
        print(f"{path} was written with other params or data: starting afresh")
        return None
    return state


def run(base: BaseConfig, model_cfg: ModelConfig, cfg: TrainConfig, cache_dir: Path,
        model_out: Path, metrics_out: Path, curves_dir: Path, checkpoint_dir: Path
        ) -> dict[str, Any]:
    """Train through every phase (resuming a killed run) and save the best model."""
    check_model_config(model_cfg)
    meta_path = cache_dir / "meta.json"
    if not meta_path.exists():
        raise PipelineError(f"{meta_path} not found: run the cache stage first (dvc repro)")
    cache_meta_text = meta_path.read_text()
    cache_meta = json.loads(cache_meta_text)
    classes = cache_meta["classes"]
    train_ids = cache_meta["ids"]["train"]
    # epoch e (from 0) reads pre-augmented view e mod K when the cache has K views
    train_views = [load_split(cache_dir, "train", train_ids, view=k)
                   for k in range(cache_meta["views"])] or [load_split(cache_dir, "train",
                                                                      train_ids)]
    val_data = load_split(cache_dir, "val", cache_meta["ids"]["val"])
    if len(val_data.labels) == 0:
        raise PipelineError("the val split is empty: give split.fractions.val > 0, it "
                            "chooses the checkpoint")

    rank, world, device = _distributed(base.device)
    order = seed_everything(cfg.seed, deterministic=base.deterministic)  # batch order
    augment_rng = torch.Generator().manual_seed(cfg.seed + 1 + rank)  # flips and shifts
    model, prep, weights_info = create_model(model_cfg, len(classes))
    groups = layer_groups(model)
    tops = check_phases(cfg, groups)  # bad schedules fail here, before any work
    if rank == 0:
        print(f"{len(groups)} layer groups, stem to head:")
        for i, g in enumerate(groups):
            print(f"  {i:2d} {g.name:<32} {g.size:>12,} parameters")
    model.to(device).to(memory_format=torch.channels_last)  # see engine.to_input
    head = head_module(model)
    optimizer = make_optimizer(cfg, param_groups(model, groups, cfg.weight_decay))
    scaler = torch.amp.GradScaler(device.type,
                                  enabled=amp_dtype(device, cfg.amp) == torch.float16)
    ema = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema_decay)
    forward: Any = torch.compile(model) if cfg.compile else model
    mix = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.CrossEntropyLoss(
        label_smoothing=cfg.label_smoothing)
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data.mixup import Mixup, mixup_target
        from timm.loss import SoftTargetCrossEntropy

        mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                      label_smoothing=cfg.label_smoothing, num_classes=len(classes))

        def mix(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if len(x) % 2:  # timm mixes pairs: an odd batch trains unmixed
                return x, mixup_target(y, len(classes), smoothing=cfg.label_smoothing)
            return mixer(x, y)

        loss_fn = SoftTargetCrossEntropy()

    checkpoint_path = checkpoint_dir / CHECKPOINT
    key = fingerprint(base, model_cfg, cfg, cache_meta_text, world)
    resume = _load_checkpoint(checkpoint_path, key)
    mode: Literal["min", "max"] = "min" if cfg.monitor == "val_loss" else "max"
    sign = -1.0 if mode == "min" else 1.0

    def better(new: dict[str, float], old: dict[str, float] | None) -> bool:
        """A higher (lower) monitored metric; on a tie, the lower val loss."""
        if old is None:
            return True
        return (sign * new[cfg.monitor], -new["val_loss"]) > \
            (sign * old[cfg.monitor], -old["val_loss"])

    st: dict[str, Any] = {"phase": 0, "phase_epoch": 0, "epoch": 0, "best": None,
                          "best_state": {}, "history": [], "timing": {}, "phase_best": None,
                          "since_best": 0, "stopped": False}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        if ema is not None:
            ema.module.load_state_dict(resume["ema"])
        set_rng_state(resume["rng"], order)
        augment_rng.set_state(resume["augment_rng"])
        st = resume["loop"]
        print(f"resuming {checkpoint_path}: phase {st['phase']}, epoch {st['epoch']}")

    steps = batch_count(len(train_ids), cfg.batch_size, world)  # batches per epoch, each rank
    steps_per_epoch = -(-steps // cfg.accumulate)  # optimizer steps per epoch
    live = _live(curves_dir) if rank == 0 else None
    for record in st["history"]:  # a resumed run's curves start where it stopped
        _log(live, record)

    def images_stream(data: ArraySplit) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in batches(data, cfg.batch_size, generator=order, rank=rank,
                                      world=world, pin=device.type == "cuda"):
            yield random_flip_shift(to_input(images, prep, device), hflip=cfg.hflip,
                                    shift=cfg.shift, generator=augment_rng), labels

    def features_stream(feats: torch.Tensor, labels: np.ndarray
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in batch_indices(len(labels), cfg.batch_size, generator=order, rank=rank,
                                   world=world):
            yield feats[torch.from_numpy(index).to(feats.device)], torch.from_numpy(labels[index])

    while st["phase"] < len(cfg.phases):
        p = st["phase"]
        phase, top = cfg.phases[p], tops[p]
        trainable = set_trainable(model, groups, top)
        lrs = group_lrs(cfg, phase, len(groups), top)
        set_lrs(optimizer, lrs)
        schedule = make_schedule(optimizer, cfg, phase, steps_per_epoch=steps_per_epoch,
                                 mode=mode)
        if resume is not None and st["phase_epoch"] > 0:  # killed mid-phase
            optimizer.load_state_dict(resume["optimizer"])  # the lrs where it stopped
            schedule.load_state_dict(resume["schedule"])
        resume = None
        reasons = [n for n, on in (("hflip", cfg.hflip), ("shift", cfg.shift > 0),
                                   ("mixup", cfg.mixup > 0), ("cutmix", cfg.cutmix > 0)) if on]
        use_features = top == 1 and cfg.feature_cache and not reasons
        if rank == 0:
            print(f"phase {p}: {top} of {len(groups)} layer groups trainable "
                  f"({trainable:,} parameters), head lr {lrs[-1]:g}, lowest trained lr "
                  f"{lrs[len(groups) - top]:g}, {phase.schedule or cfg.schedule}, "
                  f"{phase.epochs} epochs" + (", on stored backbone features"
                                              if use_features else ""))
            if top == 1 and cfg.feature_cache and reasons:
                print(f"  feature cache off: {', '.join(reasons)} change the inputs "
                      f"every epoch")
        features: dict[int, torch.Tensor] = {}
        net: nn.Module = head if use_features else forward
        if world > 1:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)

        def on_step(schedule: Schedule = schedule) -> None:
            schedule.batch.step()
            if ema is not None:
                ema.update(model)

        while st["phase_epoch"] < phase.epochs and not st["stopped"]:
            view = st["epoch"] % len(train_views)
            data = train_views[view]
            extra = 0.0
            if use_features and view not in features:
                start = time.perf_counter()
                features[view] = head_inputs(model, head, data, prep=prep, device=device,
                                             batch_size=cfg.batch_size, amp=cfg.amp)
                extra = time.perf_counter() - start
            train_mode(model, bn=cfg.bn)
            stream = (features_stream(features[view], data.labels) if use_features
                      else images_stream(data))
            stats = train_one_epoch(
                net, stream, steps=steps, optimizer=optimizer, on_step=on_step,
                loss_fn=loss_fn, device=device, amp=cfg.amp, scaler=scaler,
                accumulate=cfg.accumulate, clip_grad=cfg.clip_grad,
                mix=None if use_features else mix, desc=f"epoch {st['epoch'] + 1}")
            totals = torch.tensor([stats["loss_sum"], stats["seen"]], dtype=torch.float64)
            if world > 1:
                dist.all_reduce(totals)
            train_loss = float(totals[0] / totals[1])
            scored = ema.module if ema is not None else model
            val = validate(scored, val_data, prep=prep, device=device,
                           batch_size=cfg.batch_size, amp=cfg.amp)
            if schedule.plateau is not None:
                schedule.plateau.step(val[cfg.monitor])
            st["epoch"] += 1
            st["phase_epoch"] += 1
            seconds = stats["seconds"] + extra
            t = st["timing"]
            t[f"phase{p}_seconds"] = t.get(f"phase{p}_seconds", 0.0) + seconds
            record = {"train_loss": train_loss, **val, "phase": p,
                      "trainable_params": trainable}
            seen_names = set()
            for pg in optimizer.param_groups:
                if pg["name"] not in seen_names:
                    seen_names.add(pg["name"])
                    record[f"lr/{pg['layer']:02d}_{pg['name']}"] = pg["lr"]
            st["history"].append(record)
            _log(live, record)
            if better(val, st["best"]):
                st["best"] = {**val, "epoch": st["epoch"], "phase": p}
                st["best_state"] = {k: v.detach().cpu().clone()
                                    for k, v in scored.state_dict().items()}
            if better(val, st["phase_best"]):
                st["phase_best"], st["since_best"] = val, 0
            else:
                st["since_best"] += 1
                st["stopped"] = 0 < cfg.patience <= st["since_best"]
            if rank == 0:
                print(f"epoch {st['epoch']} (phase {p}): train loss {train_loss:.4f}, "
                      f"val loss {val['val_loss']:.4f}, val accuracy "
                      f"{val['val_accuracy']:.4f}, macro-F1 {val['val_macro_f1']:.4f}, "
                      f"{len(train_ids) / seconds:.0f} images/s"
                      + (f"; no gain for {st['since_best']} epochs: phase ends"
                         if st["stopped"] else ""))
            if st["phase_epoch"] == phase.epochs or st["stopped"]:
                st.update(phase=p + 1, phase_epoch=0, phase_best=None, since_best=0,
                          stopped=False)
            if rank == 0:
                _save_checkpoint(checkpoint_path, {
                    "fingerprint": key, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "rng": rng_state(order), "augment_rng": augment_rng.get_state(),
                    "loop": st})
            if st["phase"] != p:
                break
    if live is not None:
        live.end()

    best = st["best"]
    timing = {}
    for p in range(len(cfg.phases)):  # wall time of the training passes, not validation
        if f"phase{p}_seconds" in st["timing"]:
            seconds = st["timing"][f"phase{p}_seconds"]
            timing[f"phase{p}_seconds"] = round(seconds, 2)
            epochs = sum(record["phase"] == p for record in st["history"])
            timing[f"phase{p}_images_per_second"] = round(epochs * len(train_ids) / seconds, 1)
    meta = {
        "classes": classes,
        "model": as_dict(model_cfg),
        "library": weights_info["library"],
        "arch": weights_info["arch"],
        "pretrained": weights_info,
        "layer_groups": [[g.name, g.size] for g in groups],
        "preprocessing": {"image_size": cache_meta["image_size"], "fit": cache_meta["fit"],
                          "mean": list(prep.mean), "std": list(prep.std)},
        "params": {"base": as_dict(base), "train": as_dict(cfg)},
        "best": best,
        "versions": library_versions(),
    }
    metrics = {f"best_{cfg.monitor}": round(best[cfg.monitor], 6),
               "best_val_accuracy": round(best["val_accuracy"], 6),
               "best_val_loss": round(best["val_loss"], 6), "best_epoch": best["epoch"],
               "epochs": st["epoch"], **timing}
    if rank == 0:
        model_out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": st["best_state"], "meta": meta}, model_out)
        metrics_out.parent.mkdir(parents=True, exist_ok=True)
        metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
        checkpoint_path.unlink(missing_ok=True)  # finished: a forced rerun trains afresh
        (checkpoint_dir / "README.txt").write_text(
            "A killed train stage leaves last.pt here; the next run resumes from it.\n")
        print(f"best {cfg.monitor} {best[cfg.monitor]:.4f} at epoch {best['epoch']}; "
              f"saved {model_out}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a kill mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main() -> None:
    """Entry point of the DVC stage."""
    base, model, train = load_sections("base", "model", "train")
    run(base, model, train, paths.CACHE_DIR, paths.MODEL, paths.METRICS_DIR / "train.json",
        paths.CURVES_DIR, paths.CHECKPOINT_DIR)


if __name__ == "__main__":
    run_stage("train", main)
