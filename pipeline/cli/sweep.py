"""Hyperparameter sweeps in which every trial is a DVC experiment.

Optuna's TPE sampler proposes the values; each trial is ``dvc exp run -n NAME -S key=value``
(in a temporary copy of the workspace with ``--temp``, or several at a time through DVC's
queue with ``--jobs``), so ``dvc exp show`` lists every trial with its params and
metrics, and ``dvc exp apply NAME`` brings one back. The study lives in an Optuna journal
file beside the trial table and the plot (``sweeps/<name>/``): rerunning the same command
continues it.
"""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.core.errors import PipelineError

SWEEPS_DIR = Path("sweeps")
DEFAULT_SPACE = ("train.lr=log:3e-4:1e-2", "train.layer_decay=0.5:1.0")
DEFAULT_METRIC = "metrics/train.json:best_val_accuracy"  # validation: never the test split
KINDS = ("float", "log", "int")


@dataclass(frozen=True)
class Knob:
    """One searched params.yaml key: a float, log-scaled float or int range, or choices."""

    key: str
    kind: str  # float | log | int | choice
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()


def parse_knob(text: str) -> Knob:
    """``KEY=LOW:HIGH`` (uniform float), ``KEY=log:LOW:HIGH``, ``KEY=int:LOW:HIGH`` or
    ``KEY=A,B,C`` (choices, passed to ``-S`` as written)."""
    key, sep, spec = text.partition("=")
    if not sep or not key or not spec:
        raise PipelineError(f"--param {text!r}: expected KEY=LOW:HIGH, KEY=log:LOW:HIGH, "
                            "KEY=int:LOW:HIGH or KEY=A,B,C")
    parts = spec.split(":")
    if len(parts) == 1:
        choices = tuple(c for c in spec.split(",") if c)
        if len(choices) < 2:
            raise PipelineError(f"--param {text!r}: give at least two choices (A,B) or a "
                                "range (LOW:HIGH)")
        return Knob(key, "choice", choices=choices)
    kind = parts.pop(0) if parts[0] in KINDS else "float"
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise PipelineError(f"--param {text!r}: the range must be two numbers LOW:HIGH, "
                            f"with an optional kind first ({', '.join(KINDS)})") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise PipelineError(f"--param {text!r}: the bounds must be finite numbers (Optuna "
                            f"samples between them), e.g. {key}=0:1")
    if not low < high or (kind == "log" and low <= 0):
        raise PipelineError(f"--param {text!r}: need LOW < HIGH" + (" and LOW > 0 on a log "
                                                                    "scale" if kind == "log"
                                                                    else ""))
    if kind == "int" and math.ceil(low) > math.floor(high):
        raise PipelineError(f"--param {text!r}: no whole number lies between {low:g} and "
                            f"{high:g}; give an integer range, e.g. {key}=int:"
                            f"{math.floor(low)}:{math.ceil(high)}")
    return Knob(key, kind, low, high)


def check_keys(knobs: Sequence[Knob], params: dict[str, Any]) -> None:
    """Every searched key must exist in params.yaml: ``dvc exp run -S`` would silently add a
    misspelt one (DVC issue 6282), and every trial would then run the defaults."""
    for knob in knobs:
        node: Any = params
        *parents, leaf = knob.key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise PipelineError(f"{knob.key}: no such key in params.yaml "
                                f"(keys there: {valid})")


def parse_fixed(texts: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` settings that every trial gets (passed to ``-S`` as written)."""
    fixed = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise PipelineError(f"--set {text!r}: expected KEY=VALUE")
        fixed[key] = value
    return fixed


def yaml_value(value: Any) -> str:
    """The text for ``-S key=TEXT`` that YAML reads back as the same number: 4 significant
    digits, and a mantissa with a dot (PyYAML reads ``1e-06`` as a string; DVC 5971)."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        if "." not in text:
            mantissa, e, exponent = text.partition("e")
            text = f"{mantissa}.0{e}{exponent}"
        return text
    return str(value)


def propose(trial: Any, knob: Knob) -> str:
    """Ask the Optuna trial for a value of ``knob``; return it as ``-S`` text."""
    if knob.kind == "choice":
        return str(trial.suggest_categorical(knob.key, list(knob.choices)))
    if knob.kind == "int":
        return str(trial.suggest_int(knob.key, math.ceil(knob.low), math.floor(knob.high)))
    return yaml_value(trial.suggest_float(knob.key, knob.low, knob.high,
                                          log=knob.kind == "log"))


def _dvc(*args: str, log: Path, env: dict[str, str] | None = None) -> int:
    """Run ``dvc ARGS``, appending its output to ``log``; return its exit code."""
    with log.open("a") as fh:
        fh.write(f"$ dvc {' '.join(args)}\n")
        fh.flush()
        return subprocess.call([sys.executable, "-m", "dvc", *args], stdout=fh,
                               stderr=subprocess.STDOUT, env=env)


def run_trials(settings: Sequence[dict[str, str]], names: Sequence[str], *, jobs: int,
               gpus: Sequence[str], stages: Sequence[str], log: Path) -> list[bool]:
    """Run one DVC experiment per settings dict, named ``names``: one after another with
    ``--temp``, or queued and run ``jobs`` at a time by DVC's queue workers; with ``gpus``
    the k-th worker is started with CUDA_VISIBLE_DEVICES set to the k-th of them.
    ``stages``: run only these and what they depend on (default: the whole pipeline).
    Returns, per trial, whether DVC may have made its experiment (False: it failed, and an
    older experiment of that name must not be read as its result)."""
    sets = [[*stages, *[a for k, v in s.items() for a in ("-S", f"{k}={v}")]]
            for s in settings]
    if jobs == 1:
        return [_dvc("exp", "run", "--temp", "-n", name, *overrides, log=log) == 0
                for name, overrides in zip(names, sets)]
    for name, overrides in zip(names, sets):
        if _dvc("exp", "run", "--queue", "-n", name, *overrides, log=log) != 0:
            raise PipelineError(f"could not queue experiment {name}: see {log}")
    # `dvc queue start -j k` starts only the workers 1..k not yet running, each with the
    # environment it is given: worker k keeps GPU k for as long as it lives
    for k, gpu in enumerate(gpus, start=1):
        _dvc("queue", "start", "-j", str(k), log=log,
             env=dict(os.environ, CUDA_VISIBLE_DEVICES=gpu))
    _dvc("exp", "run", "--run-all", "-j", str(jobs), log=log)  # waits for every entry
    return [True] * len(names)  # queueing refused names that exist; a failure has no metric


def read_metric(experiment: str, metric: str) -> float | None:
    """``FILE:KEY`` of a finished experiment (None when it failed or lacks the key)."""
    import dvc.api
    from dvc.exceptions import DvcException

    path, _, key = metric.partition(":")
    try:
        found = dvc.api.metrics_show(path, rev=experiment)
    except DvcException:
        return None
    value = found.get(key) if isinstance(found, dict) else None
    return float(value) if isinstance(value, int | float) else None


def write_results(study: Any, knobs: Sequence[Knob], metric: str, folder: Path) -> None:
    """``trials.csv`` (one row per trial) and ``search.png`` (the metric per trial with the
    best so far, and the metric against each searched key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted(study.trials, key=lambda t: t.number)
    with (folder / "trials.csv").open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["trial", "experiment", "state", *[k.key for k in knobs], metric])
        for t in trials:
            writer.writerow([t.number, t.user_attrs.get("experiment", ""), t.state.name,
                             *[t.user_attrs.get("set", {}).get(k.key, "") for k in knobs],
                             "" if t.value is None else f"{t.value:.6g}"])
    done = [t for t in trials if t.value is not None]
    fig, axes = plt.subplots(1, 1 + len(knobs), figsize=(4 * (1 + len(knobs)), 3.4))
    axes[0].plot([t.number for t in done], [t.value for t in done], "o", label="trial")
    best = (max if study.direction.name == "MAXIMIZE" else min)
    running = [best(t.value for t in done[:i + 1]) for i in range(len(done))]
    axes[0].step([t.number for t in done], running, where="post", label="best so far")
    axes[0].set(xlabel="trial", ylabel=metric.partition(":")[2], title="search history")
    axes[0].legend(fontsize=8)
    for ax, knob in zip(axes[1:], knobs):
        values = [t.user_attrs["set"][knob.key] for t in done]
        x = values if knob.kind == "choice" else [float(v) for v in values]
        ax.scatter(x, [t.value for t in done], c=[t.number for t in done], cmap="viridis")
        ax.set(xlabel=knob.key)
        ax.set_title(f"{metric.partition(':')[2]} by {knob.key}", fontsize=9)
        if knob.kind == "log":
            ax.set_xscale("log")
    fig.suptitle(f"sweep {study.study_name}: {len(done)} of {len(trials)} trials finished")
    fig.tight_layout()
    fig.savefig(folder / "search.png", dpi=100)
    plt.close(fig)


def sweep(name: str, knobs: Sequence[Knob], *, trials: int, metric: str = DEFAULT_METRIC,
          direction: Literal["maximize", "minimize"] = "maximize", jobs: int = 1,
          gpus: Sequence[str] = (), stages: Sequence[str] = (),
          fixed: dict[str, str] | None = None, seed: int = 0, random_trials: int = 4,
          root: Path = SWEEPS_DIR) -> Any:
    """Run (or continue) the study ``name`` until it holds ``trials`` trials (finished or
    failed).
    ``fixed``: ``-S`` settings every trial gets as well (e.g. a shorter schedule).
    Returns the Optuna study; its table, plot, journal and DVC logs are in ``root/name``."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise PipelineError(f"--name {name!r}: letters, digits, '-' and '_' only (it "
                            "prefixes the DVC experiment names)")
    if ":" not in metric:
        raise PipelineError(f"--metric {metric!r}: expected FILE:KEY, e.g. {DEFAULT_METRIC}")
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(folder / "journal.log")))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=random_trials,
                                         constant_liar=True)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                direction=direction, load_if_exists=True)
    for stale in study.get_trials(states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)  # a sweep killed mid-trial
    log = folder / "dvc.log"
    # like Optuna's n_trials, every trial counts, failed ones too
    while (left := trials - len(study.trials)) > 0:
        batch = [study.ask() for _ in range(min(jobs, left))]
        settings = [{k.key: propose(t, k) for k in knobs} for t in batch]
        for t in batch:
            t.set_user_attr("fixed", dict(fixed or {}))
        names = [f"{name}-{t.number:03d}" for t in batch]
        for t, s, n in zip(batch, settings, names):
            t.set_user_attr("experiment", n)
            t.set_user_attr("set", s)
            print(f"[sweep] trial {t.number}: dvc exp run -n {n} "
                  + " ".join(f"-S {k}={v}" for k, v in s.items())
                  + (f" (and {len(fixed)} --set)" if fixed else ""), flush=True)
        ran = run_trials([{**(fixed or {}), **s} for s in settings], names, jobs=jobs,
                         gpus=gpus, stages=stages, log=log)
        for t, n, ok in zip(batch, names, ran):
            value = read_metric(n, metric) if ok else None
            if value is None or not math.isfinite(value):
                study.tell(t, state=TrialState.FAIL)
                print(f"[sweep] trial {t.number} ({n}) failed: see {log}", flush=True)
            else:
                study.tell(t, value)
                print(f"[sweep] trial {t.number} ({n}): {metric} = {value:.6g}", flush=True)
        write_results(study, knobs, metric, folder)
    if not study.get_trials(states=(TrialState.COMPLETE,)):
        raise PipelineError(f"sweep {name}: no trial finished; see {log}")
    return study
