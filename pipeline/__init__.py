"""finetune-pipeline: a reproducible transfer-learning pipeline (see README.md, docs/)."""

import os

# NumPy's and SciPy's OpenBLAS pick their kernels by CPU when the library loads, before
# any stage can read base.deterministic: on an AVX-512 machine its SkylakeX kernels sum
# in another order than the AVX2 ones and changed clean's label_quality digits (so
# dvc.lock) between machines. Every process that imports the package before NumPy uses
# the AVX2 (Haswell) kernels, which every x86-64 machine we run on has; an explicit
# OPENBLAS_CORETYPE still wins. seeding.pin_cpu warns when the pin came too late.
os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")
