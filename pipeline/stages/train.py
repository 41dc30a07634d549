"""train stage: fine-tune the backbone on the cache in phases; write models/model.pt.

``train.phases`` is the schedule: each phase trains the head alone (backbone and its
BatchNorm statistics frozen) or everything, at ``train.lr * lr_mult``, with linear
warmup then cosine decay. The checkpoint with the best validation accuracy is kept.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from dvclive import Live
from scmrepo.exceptions import SCMError
from torch import nn

from pipeline import paths
from pipeline.config import (
    BaseConfig,
    ModelConfig,
    PipelineError,
    TrainConfig,
    as_dict,
    load_sections,
    run_stage,
)
from pipeline.engine import load_split, predict, train_one_epoch
from pipeline.models import (
    check_model_config,
    create_model,
    library_versions,
    set_trainable,
    train_mode,
)
from pipeline.seeding import resolve_device, seed_everything


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: no weight decay on norms and biases (1-D)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR factor per step: linear warmup from ~0 to 1, then cosine decay to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _live(curves_dir: Path) -> Live:
    """dvclive logger writing per-epoch curves under curves_dir (no git or dvc.yaml edits)."""
    try:
        return Live(dir=str(curves_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    except SCMError as exc:  # dvclive cannot start in a git repo without commits
        raise PipelineError(f"dvclive could not start ({exc}): commit once "
                            f"(git commit) before training") from None


def run(base: BaseConfig, model_cfg: ModelConfig, cfg: TrainConfig, cache_dir: Path,
        model_out: Path, metrics_out: Path, curves_dir: Path) -> dict[str, Any]:
    """Train through every phase and save the best checkpoint with its metadata."""
    check_model_config(model_cfg)
    device = resolve_device(base.device)
    meta_path = cache_dir / "meta.json"
    if not meta_path.exists():
        raise PipelineError(f"{meta_path} not found: run the cache stage first (dvc repro)")
    cache_meta = json.loads(meta_path.read_text())
    classes = cache_meta["classes"]
    views = cache_meta["views"]
    train_ids = cache_meta["ids"]["train"]
    # epoch e (from 0) reads pre-augmented view e mod K when the cache has K views
    train_views = [load_split(cache_dir, "train", train_ids, view=k) for k in range(views)] \
        or [load_split(cache_dir, "train", train_ids)]
    val_data = load_split(cache_dir, "val", cache_meta["ids"]["val"])
    if len(val_data.labels) == 0:
        raise PipelineError("the val split is empty: give split.fractions.val > 0, it "
                            "chooses the checkpoint")

    generator = seed_everything(cfg.seed, deterministic=base.deterministic)
    model, prep, weights_info = create_model(model_cfg, len(classes))
    model.to(device).to(memory_format=torch.channels_last)  # see engine.to_input
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps_per_epoch = -(-len(train_ids) // cfg.batch_size)

    best: dict[str, Any] = {"val_accuracy": -1.0}
    best_state: dict[str, torch.Tensor] = {}
    epoch = 0
    timing: dict[str, float] = {}
    with _live(curves_dir) as live:
        for phase_index, phase in enumerate(cfg.phases):
            trainable = set_trainable(model, phase.unfreeze)
            lr = cfg.lr * phase.lr_mult
            optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr)
            total = phase.epochs * steps_per_epoch
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, warmup_cosine(total, round(cfg.warmup_epochs * steps_per_epoch)))
            print(f"phase {phase_index}: {phase.unfreeze} trainable "
                  f"({trainable:,} parameters), lr {lr:g}, {phase.epochs} epochs")
            phase_seconds, phase_images = 0.0, 0
            for _ in range(phase.epochs):
                train_mode(model, phase.unfreeze, bn=cfg.bn)
                stats = train_one_epoch(
                    model, train_views[epoch % len(train_views)], optimizer=optimizer,
                    scheduler=scheduler, prep=prep, device=device, batch_size=cfg.batch_size,
                    generator=generator, loss_fn=loss_fn, hflip=cfg.hflip, shift=cfg.shift,
                    amp=cfg.amp, desc=f"epoch {epoch + 1}")
                epoch += 1
                phase_seconds += stats["seconds"]
                phase_images += len(train_ids)
                probs = predict(model, val_data, prep=prep, device=device,
                                batch_size=cfg.batch_size, amp=cfg.amp)
                labels = torch.from_numpy(val_data.labels)
                val_loss = float(nn.functional.nll_loss(
                    torch.from_numpy(probs).clamp_min(1e-12).log(), labels))
                val_acc = float((probs.argmax(1) == val_data.labels).mean())
                for name, value in (("train_loss", stats["loss"]), ("val_loss", val_loss),
                                    ("val_accuracy", val_acc), ("phase", phase_index),
                                    ("lr", optimizer.param_groups[0]["lr"])):
                    live.log_metric(name, value)
                live.next_step()
                print(f"epoch {epoch} (phase {phase_index}): train loss {stats['loss']:.4f}, "
                      f"val loss {val_loss:.4f}, val accuracy {val_acc:.4f}, "
                      f"{stats['images_per_second']:.0f} images/s")
                if val_acc > best["val_accuracy"]:
                    best = {"val_accuracy": val_acc, "val_loss": val_loss, "epoch": epoch,
                            "phase": phase_index}
                    best_state = copy.deepcopy(model.state_dict())
            # wall time of the training passes (validation excluded), for every run's record
            timing[f"phase{phase_index}_seconds"] = round(phase_seconds, 2)
            timing[f"phase{phase_index}_images_per_second"] = round(
                phase_images / phase_seconds, 1)

    meta = {
        "classes": classes,
        "model": as_dict(model_cfg),
        "library": weights_info["library"],
        "arch": weights_info["arch"],
        "pretrained": weights_info,
        "preprocessing": {"image_size": cache_meta["image_size"], "fit": cache_meta["fit"],
                          "mean": list(prep.mean), "std": list(prep.std)},
        "params": {"base": as_dict(base), "train": as_dict(cfg)},
        "best": best,
        "versions": library_versions(),
    }
    model_out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.cpu() for k, v in best_state.items()}, "meta": meta},
               model_out)
    metrics = {"best_val_accuracy": round(best["val_accuracy"], 6),
               "best_val_loss": round(best["val_loss"], 6), "best_epoch": best["epoch"],
               "epochs": epoch, **timing}
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"best val accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']}; "
          f"saved {model_out}")
    return metrics


def main() -> None:
    """Entry point of the DVC stage."""
    base, model, train = load_sections("base", "model", "train")
    run(base, model, train, paths.CACHE_DIR, paths.MODEL, paths.METRICS_DIR / "train.json",
        paths.CURVES_DIR)


if __name__ == "__main__":
    run_stage("train", main)
