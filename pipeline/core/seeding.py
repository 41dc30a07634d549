"""Reproducibility in one place: seeding, the deterministic switch, and every RNG state
a resumed run needs."""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from pipeline.core.errors import PipelineError


def seed_everything(seed: int, *, deterministic: bool) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for data order.

    ``deterministic`` turns on torch's deterministic algorithms (and the cuBLAS
    workspace setting CUDA needs for them) and pins the CPU code paths
    (:func:`pin_cpu`), so a rerun gives bit-identical weights, on this machine or another.
    """
    pin_cpu(deterministic=deterministic)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(name: str) -> torch.device:
    """Map base.device to a torch device; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("base.device = cuda but no CUDA device is available; "
                            "use auto or cpu")
    return torch.device(name)


# Deterministic mode pins what changes float results between CPU machines. Measured with
# benchmarks/determinism.py: the thread count (1 vs 2), ATen's kernels (AVX-512 vs AVX2),
# oneDNN's ISA and MKL's code path each change the trained weights on their own.
DETERMINISTIC_THREADS = 2  # a constant, not the core count: any machine runs the same split
CPU_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorised kernels (read at first use)
    "ONEDNN_MAX_CPU_ISA": "AVX2",   # oneDNN convolutions (read when oneDNN starts)
    "MKL_CBWR": "AVX2",             # MKL's conditional numerical reproducibility
}


def pin_cpu(*, deterministic: bool) -> dict[str, Any]:
    """Pin the CPU code paths and thread count that decide float results, so that the same
    commit and lock give bit-identical outputs on any x86-64 machine with AVX2.

    Call it first in a stage, before any tensor op: ATen, oneDNN and MKL read their
    settings once, at first use. An explicit environment variable still wins. Returns
    what the process computes with (for provenance). Without ``deterministic`` nothing
    is pinned and torch uses every core and the widest kernels it has.
    """
    if deterministic:
        for name, value in CPU_PINS.items():
            os.environ.setdefault(name, value)
        torch.set_num_threads(DETERMINISTIC_THREADS)
        # NumPy's and SciPy's BLAS (clean's probe, similarity searches) and OpenMP: their
        # sums also split by thread count (a 1-thread run changed label_quality digits).
        threadpool_limits(limits=DETERMINISTIC_THREADS)
        blas = {info["architecture"] for info in threadpool_info()
                if info.get("internal_api") == "openblas" and "architecture" in info}
        if blas - {"Haswell", "Zen"}:  # Zen runs the Haswell kernels
            print(f"warning: base.deterministic: NumPy's OpenBLAS runs its "
                  f"{', '.join(sorted(blas))} kernels (NumPy was loaded before the "
                  f"pipeline package set OPENBLAS_CORETYPE); results may differ from "
                  f"another machine's", file=sys.stderr)
        wanted = os.environ["ATEN_CPU_CAPABILITY"].upper()
        if torch.backends.cpu.get_cpu_capability() not in (wanted, "DEFAULT"):
            # Only in a process that computed before (a test session): a stage is fresh.
            print(f"warning: base.deterministic: ATen already chose its "
                  f"{torch.backends.cpu.get_cpu_capability()} kernels in this process; "
                  f"results may differ from another machine's", file=sys.stderr)
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "pins": {n: os.environ[n] for n in CPU_PINS if n in os.environ}}


# ----------------------------------------------------------------------------- RNG state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a resumed run needs, as tensors and plain data (weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    assert isinstance(keys, np.ndarray)
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "generator": generator.get_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": pos, "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
