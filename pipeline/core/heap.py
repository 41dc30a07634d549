"""Keep freed memory in the process instead of handing it back to the kernel.

glibc serves an allocation over its mmap threshold (128 KiB, rising to at most 32 MiB)
with a fresh ``mmap`` and unmaps it on ``free``, so every large activation of a forward
pass faults its pages in again, zero-filled, one 4 KiB page at a time. EfficientNet-Lite0
at 288 px, batch 32, on a 2-core machine (``python benchmarks/heap.py``): 4.2 million minor
faults, 16.0 s in the kernel, 12.9 images/s; with this, 0.42 million, 1.7 s and 35.1
images/s, for 31 % more peak memory (docs/measured.md). PyTorch's CPU tuning
guide gives the same advice (jemalloc or tcmalloc); ``mallopt`` does it with the
C library already loaded, nothing to install or preload. It changes where tensors live,
not what is computed: outputs stay bit-identical. Every stage calls it first
(``errors.run_stage``); the server and library users keep their own malloc settings.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1   # free top-of-heap memory kept before it is returned
M_MMAP_MAX = -4         # how many allocations may be served by mmap; 0: none, use the heap
TRIM_BYTES = 1 << 30    # keep up to 1 GiB of freed top-of-heap memory for reuse
OPT_OUT = "PIPELINE_HEAP"  # =glibc leaves the C library's malloc settings as they are


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and keep freed memory for reuse (glibc on
    Linux); True when set. ``PIPELINE_HEAP=glibc`` in the environment, another C library
    or another system leaves malloc alone."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
