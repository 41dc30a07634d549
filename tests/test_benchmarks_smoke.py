"""Every benchmark runs: ``python benchmarks/<name>.py --smoke`` takes its whole code path
on tiny data it makes itself (timm's tiny test model, no shared data sets, no pretrained
weights) and prints its table. Each runs in a scratch folder with its temporary files
there too, so nothing is written into the repository."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

# benchmark -> text its output must hold: its table's header, or its result lines
PRINTS: dict[str, tuple[str, ...]] = {
    "calibrate_copies": ("=== textures:", "MEASURED on planted: recall"),
    "clean_planted": ("unreadable ", "near_duplicate (pairs)", "label_issue (flips)"),
    "clean_scale": ("peak memory (ru_maxrss)", "near copies found with their source",
                    "aligned views"),
    "copy_variants": ("plain, 16 px, blur 0:", "48 crop x scale variants, 16 px, blur 1:"),
    "determinism": ("case                 weights", "same as base"),
    "feature_cache": ("head epoch on stored features:", "speed-up per epoch"),
    "heap": ("malloc                 forward img/s", "pipeline (heap.py)"),
    "imbalance": ("class_weights sampler   macro-F1 [95% CI]", "balanced  "),
    "input_pipeline": ("loop / bound", "loop / tutorial", "cached 64x64 images: peak RSS"),
    "probe_sizes": ("32 px: C=0.01:", "48 px: C=0.01:"),
    "real_data": ("| data set | test images | test accuracy [95 % CI] |", "| tiny | "),
    "recipes": ("| recipe | best val accuracy |", "| gradual | "),
    "serve": ("1 client(s): 10 single-image requests", "(status codes [200])"),
    "serve_memory": ("2 concurrent uploads of a 64x64 PNG", "status codes [200]"),
    "split_large": ("2,000 rows, method group, embedding dimension 16",),
    "text": ("| data | method | test accuracy [95 % CI] |", "| smoke_groups | "),
    "tutorial_recipe": ("tutorial recipe: 18 train images, test accuracy",),
    "text_clean": ("near copies: recall", "label flips: recall", "clean's own estimate"),
}
# dvc repro of prepare .. evaluate: 7 stage processes, each importing torch and timm
SLOW = {"real_data"}


BENCHMARKS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "common")


def test_every_benchmark_says_what_its_smoke_run_prints():
    assert set(BENCHMARKS) <= set(PRINTS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in BENCHMARKS])
def test_smoke(name: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path),
           "DVC_NO_ANALYTICS": "1", "PYTHONWARNINGS": "ignore",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{name}.py"), "--smoke"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    for text in PRINTS[name]:
        assert text in done.stdout, f"{text!r} not printed:\n{done.stdout[-3000:]}"
