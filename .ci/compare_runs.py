"""CI check: two runs of the pipeline produced the same outputs.

Every output hash in the two dvc.lock files must match, except metrics/train.json,
which records wall times (its other keys must match), and the reports folder, which
shows those wall times.
Usage: compare_runs.py FIRST_LOCK SECOND_LOCK FIRST_TRAIN_JSON SECOND_TRAIN_JSON
"""

import json
import sys

import yaml

TIMED = "metrics/train.json"
SHOWS_TIMINGS = {TIMED, "reports"}
TIMING_SUFFIXES = ("_seconds", "_images_per_second")


def hashes(lock_path: str) -> dict[str, str]:
    lock = yaml.safe_load(open(lock_path))
    out = {}
    for stage, spec in lock["stages"].items():
        for entry in spec.get("deps", []) + spec.get("outs", []):
            if entry["path"] not in SHOWS_TIMINGS:
                out[f"{stage}: {entry['path']}"] = entry.get("md5") or entry.get("hash", "")
    return out


def untimed(path: str) -> dict:
    return {k: v for k, v in json.load(open(path)).items() if not k.endswith(TIMING_SUFFIXES)}


first, second, first_train, second_train = sys.argv[1:5]
a, b = hashes(first), hashes(second)
differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
for key in differ:
    print(f"CI: differs: {key}: {a.get(key)} != {b.get(key)}")
if untimed(first_train) != untimed(second_train):
    differ.append(TIMED)
    print(f"CI: {TIMED} differs beyond timings: {untimed(first_train)} != {untimed(second_train)}")
if differ:
    sys.exit(f"CI: {len(differ)} outputs differ between the two runs")
print(f"CI: all {len(a)} dependency and output hashes match ({TIMED}: all but timings; "
      f"reports not compared)")
