"""Issue 12 study: which train.* defaults suit real photos (ants/bees at 224 px)?

    python benchmarks/schedule_study.py setup   --work /tmp/ab [--size 224]
    python benchmarks/schedule_study.py trial NAME --work /tmp/ab --set train.phases='[...]' ...

setup builds one scratch project in WORK/base (a CSV manifest: the data set's val/ is
the test split, val is a seeded stratified 20 % of its train/), runs prepare, embed,
clean, split and cache once. Each trial copies params.yaml, links WORK/base/data and
runs train + evaluate in WORK/trials/NAME; one JSON line per trial goes to
WORK/results.jsonl (phase bests, test accuracy, stage seconds). The images are only
read from the data root; nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ROOT = Path("/work/shared/data/hymenoptera")


def manifest(out: Path, seed: int = 0, val_share: float = 0.2) -> None:
    rows = []
    rng = random.Random(seed)
    for label in ("ants", "bees"):
        train = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "train" / label).iterdir())
        rng.shuffle(train)
        n_val = round(len(train) * val_share)
        rows += [(p, label, "val" if i < n_val else "train") for i, p in enumerate(train)]
        rows += [(p.relative_to(ROOT).as_posix(), label, "test")
                 for p in sorted((ROOT / "val" / label).iterdir())]
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(sorted(rows))


def base_params(size: int, fit: str = "crop") -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(source="csv", root=str(ROOT), manifest="manifest.csv")
    p["embed"]["image_size"] = 224
    p["clean"]["near_duplicate_threshold"] = 0.90
    p["split"].update(method="predefined", near_duplicate_threshold=0.90)
    p["cache"]["image_size"] = size
    p["cache"]["fit"] = fit
    p["train"]["hflip"] = True
    return p


def train_with_test_curve() -> None:
    """The train stage, unchanged, except that after every epoch the scored model is also
    run on the test split and 'test accuracy X' printed (study only: selection and the
    saved model still use val; the extra pass is not in the phase timings)."""
    import pipeline.stages.train as train
    from pipeline import paths
    from pipeline.config import run_stage
    from pipeline.engine import load_split, predict
    from pipeline.metrics import headline

    meta = json.loads((paths.CACHE_DIR / "meta.json").read_text())
    test = load_split(paths.CACHE_DIR, "test", meta["ids"]["test"])
    validate = train.validate

    def both(model, data, **kwargs):
        out = validate(model, data, **kwargs)
        acc = headline(test.labels, predict(model, test, **kwargs))["accuracy"]
        print(f"test accuracy {acc:.4f}", flush=True)
        return out

    train.validate = both
    run_stage("train", train.main, argv=[])


def run(stage: str, cwd: Path, log) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    start = time.perf_counter()
    cmd = ([sys.executable, str(Path(__file__).resolve()), "_train"] if stage == "train"
           else [sys.executable, "-m", f"pipeline.stages.{stage}"])
    r = subprocess.run(cmd, cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    log.write(f"### {stage} ({seconds:.1f} s wall, rc {r.returncode})\n{r.stdout}\n")
    log.flush()
    if r.returncode:
        raise SystemExit(f"{stage} failed in {cwd}:\n{r.stdout[-3000:]}")
    return seconds


def setup(work: Path, size: int, name: str, fit: str = "crop") -> None:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    manifest(d / "manifest.csv")
    params = base_params(size, fit)
    if name != "base":  # another cache size reuses base's clean/split decisions
        base = work / "base"
        for sub in ("prepared", "embed", "clean", "split"):
            (d / "data").mkdir(exist_ok=True)
            link = d / "data" / sub
            if not link.exists():
                link.symlink_to(base / "data" / sub)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ["prepare", "embed", "clean", "split", "cache"] if name == "base" else ["cache"]
    with (d / "setup.log").open("a") as log:
        for stage in stages:
            print(stage, f"{run(stage, d, log):.1f} s")


def set_key(params: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    node = params
    for k in path:
        node = node[k]
    node[last] = yaml.safe_load(value)


def trial(work: Path, name: str, sets: list[str], data: str) -> dict:
    d = work / "trials" / name
    d.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((work / data / "params.yaml").read_text())
    for s in sets:
        key, value = s.split("=", 1)
        set_key(params, key, value)
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (d / "data").exists():
        (d / "data").symlink_to(work / data / "data")
    with (d / "run.log").open("w") as log:
        train_wall = run("train", d, log)
        eval_wall = run("evaluate", d, log)
    text = (d / "run.log").read_text()
    tm = json.loads((d / "metrics/all/train.json").read_text())
    ev = json.loads((d / "metrics/all/eval.json").read_text())
    curve = [(int(p), float(a)) for p, a in
             re.findall(r"\(phase (\d+)\): .*?val accuracy ([0-9.]+)", text)]
    phases = sorted({p for p, _ in curve})
    done = re.search(r"\[train\] done in ([0-9.]+)", text)
    result = {
        "name": name, "data": data, "sets": sets,
        "val_curve": [a for _, a in curve],
        "best_val_per_phase": [max(a for q, a in curve if q == p) for p in phases],
        "test_curve": [float(a) for a in re.findall(r"^test accuracy ([0-9.]+)$", text, re.M)],
        "best_epoch": tm["best_epoch"],
        "test_accuracy": ev.get("test_accuracy", ev.get("accuracy")),
        "phase_seconds": [tm.get(f"phase{p}_seconds") for p in phases],
        "train_stage_seconds": float(done.group(1)) if done else None,
        "train_wall_seconds": round(train_wall, 1),
        "eval_wall_seconds": round(eval_wall, 1),
        "machine": "2 CPU cores, shared with another engineer's tests",
        "loadavg_after": os.getloadavg()[0],
    }
    with (work / "results.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result))
    return result


def summary(work: Path) -> str:
    """A markdown table of every trial in WORK/results.jsonl (the last run of each name)."""
    rows = {}
    for line in (work / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        log = work / "trials" / r["name"] / "run.log"
        if log.exists():  # early results parsed the test curve with a looser pattern
            r["test_curve"] = [float(a) for a in re.findall(r"^test accuracy ([0-9.]+)$",
                                                            log.read_text(), re.M)]
        rows[r["name"]] = r
    out = ["| trial | data | params | best val per phase | test curve (per epoch) | test acc "
           "(saved model) | phase s | train stage s | wall s |", "|" + "---|" * 9]
    for r in rows.values():
        sets = "; ".join(s.replace("train.", "") for s in r["sets"]) or "defaults"
        curve = " ".join(f"{a:.3f}" for a in r.get("test_curve", [])) or "-"
        out.append(f"| {r['name']} | {r['data']} | {sets} | "
                   f"{' / '.join(f'{a:.3f}' for a in r['best_val_per_phase'])} | {curve} | "
                   f"{r['test_accuracy']:.3f} | "
                   f"{' + '.join(str(s) for s in r['phase_seconds'])} | "
                   f"{r['train_stage_seconds']} | {r['train_wall_seconds']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["setup", "trial", "_train", "summary"])
    ap.add_argument("name", nargs="?", default="base")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ab"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fit", default="crop", choices=["crop", "pad", "stretch"])
    ap.add_argument("--data", default="base", help="the setup folder whose cache a trial uses")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    a = ap.parse_args()
    if a.cmd == "summary":
        print(summary(a.work), end="")
    elif a.cmd == "_train":
        train_with_test_curve()
    elif a.cmd == "setup":
        setup(a.work, a.size, a.name, a.fit)
    else:
        trial(a.work, a.name, a.sets, a.data)


if __name__ == "__main__":
    main()
