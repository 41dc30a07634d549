"""pipeline/core/heap.py: freed large blocks are reused, not unmapped and faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocate, touch and free a 64 MiB tensor 20 times (NumPy asks for huge pages, torch does
# not); print the minor page faults of the last 19.
PROBE = """
import resource
import torch
from pipeline.core.heap import keep_freed_memory
keep_freed_memory()  # as every stage does first (run_stage)
torch.ones(16 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    torch.ones(16 << 20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(**env: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_large_array_is_reused_without_page_faults() -> None:
    pages = 19 * (64 << 20) // 4096  # 311,296: every page of every tensor faulted in again
    assert faults(PIPELINE_HEAP="glibc") > pages * 9 // 10  # measured: 311,315
    assert faults() < pages // 3  # measured: 32,768 or 65,536, the heap growing at first
