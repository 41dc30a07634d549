"""What glibc's malloc costs a CPU forward pass, and what pipeline/core/heap.py buys back.

    python benchmarks/heap.py [--size 288] [--batch 32] [--batches 6] [--train-size 48]
    python benchmarks/heap.py --smoke

Runs the same measurement in two fresh processes, one with ``PIPELINE_HEAP=glibc`` (the C
library's settings: every large tensor mmapped and unmapped) and one as every stage runs
(``run_stage``: large tensors from the heap, freed memory kept): ``model.name`` with random weights,
channels_last, inference forward passes at ``--size`` px, then train steps (forward,
backward, AdamW) at ``--train-size`` px, 2 threads. Prints images/s of each, and the
process's minor page faults, kernel (sys) seconds and peak RSS. Time it alone: 2 cores.
``--smoke``: timm's tiny test model at 32 px, 2 batches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import TINY_MODEL, add_smoke, load_params  # noqa: E402

# The child: measures in a fresh process, with or without the stages' malloc settings.
CHILD = """
import json, resource, sys, time
from pipeline.core.heap import keep_freed_memory
keep_freed_memory()  # as every stage does first, unless PIPELINE_HEAP=glibc
import torch
from pipeline.finetuning.backbones import create_model
from pipeline.params.model import ModelConfig
name, size, batch, batches, train_size = json.loads(sys.argv[1])
torch.set_num_threads(2)
torch.manual_seed(0)
model = create_model(ModelConfig(name=name, weights="none", drop_rate=0.0), 10,
                     pretrained=False)[0]
model = model.to(memory_format=torch.channels_last)
def rate(step, x, n):
    step(x)  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        step(x)
    return n * len(x) / (time.perf_counter() - start)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
model.eval()
with torch.inference_mode():
    forward = rate(model, x, batches)
model.train()
opt = torch.optim.AdamW(model.parameters(), 1e-3)
y = torch.randint(0, 10, (batch,))
def train_step(x):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
x = torch.randn(batch, 3, train_size, train_size).contiguous(memory_format=torch.channels_last)
train = rate(train_step, x, batches)
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"forward": forward, "train": train, "minflt": use.ru_minflt,
                  "sys": use.ru_stime, "user": use.ru_utime, "maxrss_mb": use.ru_maxrss / 1024}))
"""


def measure(setting: str, args: list) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PIPELINE_HEAP", None)
    if setting == "glibc":
        env["PIPELINE_HEAP"] = "glibc"
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=48)
    add_smoke(parser)
    a = parser.parse_args()
    args = ([TINY_MODEL, 32, 8, 2, 32] if a.smoke
            else [load_params(path=REPO / "params.yaml")["model"]["name"], a.size, a.batch,
                  a.batches, a.train_size])
    print(f"{args[0]}: forward at {args[1]} px, train steps at {args[4]} px, batch {args[2]}, "
          f"{args[3]} batches, 2 threads")
    print(f"{'malloc':<22} {'forward img/s':>13} {'train img/s':>11} {'minor faults':>12} "
          f"{'sys s':>6} {'user s':>6} {'peak RSS MB':>11}")
    for setting, label in (("glibc", "glibc's settings"), ("pipeline", "pipeline (heap.py)")):
        r = measure(setting, args)
        print(f"{label:<22} {r['forward']:>13.1f} {r['train']:>11.1f} {r['minflt']:>12,} "
              f"{r['sys']:>6.1f} {r['user']:>6.1f} {r['maxrss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
