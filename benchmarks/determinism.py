"""What changes the trained weights between CPU machines? Run on purpose; prints a table.

Runs the real train stage (``python -m pipeline.stages.train``) several times on the
demo's cache (run ``bash run.sh demo`` first), each in a scratch folder with its own
params.yaml and one environment change that stands in for another machine: the thread
count, ATen's CPU capability (AVX-512 vs AVX2 kernels), oneDNN's ISA, MKL's code path.
Prints, per case, a hash of the trained weights, the test-free val accuracy, and the
train stage's wall time, then which cases agree with the first.

    python benchmarks/determinism.py                 # short phases (1 + 1 epochs)
    python benchmarks/determinism.py --full          # the params.yaml phases
    python benchmarks/determinism.py --cases base,avx2 --set base.deterministic=false
    python benchmarks/determinism.py --smoke         # a tiny cache and model, one case

Time it alone: every case is timed, and a second job on a 2-core machine skews that.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import add_smoke, load_params, smoke_params, tiny_cache  # noqa: E402

# Each case: environment variables that make this machine behave like another one.
CASES: dict[str, dict[str, str]] = {
    "base": {},
    "threads1": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "threads4": {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten_default": {"ATEN_CPU_CAPABILITY": "default"},
    "onednn_avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "mkl_avx2": {"MKL_CBWR": "AVX2"},
    "all_avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                 "MKL_CBWR": "AVX2"},
    "all_avx2_threads1": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                          "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1",
                          "MKL_NUM_THREADS": "1"},
}
SHORT = ("train.phases=[{epochs: 1, unfreeze: head, lr_mult: 5.0}, "
         "{epochs: 1, unfreeze: all, lr_mult: 0.25}]",)


def weights_hash(path: Path) -> str:
    """sha256 over every tensor of the saved state dict, in key order."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_case(name: str, env_change: dict[str, str], params: dict, work: Path, cache: Path
             ) -> dict:
    """Train once on ``cache`` in a new folder under ``work`` with ``params`` and
    ``env_change``; return a table row. A case may be named twice (a rerun, for timing)."""
    folder = work / f"{len(list(work.iterdir()))}_{name}"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "cache").symlink_to(cache.resolve())
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_change}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], cwd=folder,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name}: train failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((folder / "metrics" / "all" / "train.json").read_text())
    return {"case": name, "weights": weights_hash(folder / "models" / "model.pt"),
            "val_acc": metrics.get("best_val_accuracy"), "seconds": round(seconds, 1),
            "env": " ".join(f"{k}={v}" for k, v in env_change.items()) or "-"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated names")
    parser.add_argument("--full", action="store_true", help="the params.yaml phases")
    parser.add_argument("--set", action="append", default=[], help="section.key=value")
    add_smoke(parser)
    args = parser.parse_args()
    params = load_params((() if args.full else SHORT) + tuple(args.set),
                         path=REPO / "params.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = REPO / "data" / "cache"
        if args.smoke:
            params, cache, args.cases = smoke_params(args.set), tiny_cache(Path(tmp)), "base"
        (Path(tmp) / "runs").mkdir()
        for name in args.cases.split(","):
            rows.append(run_case(name, CASES[name], params, Path(tmp) / "runs", cache))
            print(json.dumps(rows[-1]), flush=True)
    first = rows[0]["weights"]
    print(f"\n{'case':<20} {'weights':<17} {'same as ' + rows[0]['case']:<14} "
          f"{'val acc':<8} {'s':>6}  env")
    for row in rows:
        print(f"{row['case']:<20} {row['weights']:<17} {str(row['weights'] == first):<14} "
              f"{row['val_acc']!s:<8} {row['seconds']:>6}  {row['env']}")


if __name__ == "__main__":
    main()
