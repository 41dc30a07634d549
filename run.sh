#!/usr/bin/env bash
# One entry point for people and CI:
#   bash run.sh demo   set up .venv if needed, then run the whole pipeline (dvc repro) and
#                      print the closing summary (python -m pipeline run)
#   bash run.sh test   set up .venv if needed, then run the test suite
#   bash run.sh lock   re-resolve requirements.lock on purpose (uv; add --upgrade to move on)
# Extra arguments go to dvc repro or pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  # Re-install when the lock changed since the last install. Every package comes from
  # requirements.lock at its exact version and hash; the project itself adds no others.
  if [ ! -x "$VENV/bin/python" ] || [ requirements.lock -nt "$VENV/.installed" ] \
      || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "setting up $VENV from requirements.lock (first run downloads PyTorch, a few GB)..."
    # PyTorch's PyPI wheels bring CUDA: the environment takes 6.5 GB. Say so up front
    # rather than fail halfway through pip with "No space left on device".
    mkdir -p "$(dirname "$VENV")"
    free_kb=$(df -Pk "$(dirname "$VENV")" | awk 'NR == 2 {print $4}')
    if [ ! -x "$VENV/bin/python" ] && [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
      echo "run.sh: $VENV needs about 8 GB of free disk (6.5 GB installed, plus pip's" \
        "downloads); $(dirname "$VENV") has $((free_kb / 1024 / 1024)) GB free" >&2
      exit 1
    fi
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --require-hashes -r requirements.lock
    "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e .
    touch "$VENV/.installed"
  fi
  # `dvc plots show/diff` draw offline: .dvc/config names this committed page template,
  # which inlines the Vega libraries of the locked vl-convert-python wheel; rewritten
  # (only if it changes) after an install
  if [ ! -f .dvc/offline_plots.html ] || [ "$VENV/.installed" -nt .dvc/offline_plots.html ]; then
    "$VENV/bin/python" -m pipeline plots-template
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
  # No telemetry or update checks: the pipeline runs offline.
  export DVC_NO_ANALYTICS=1
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup
    python -m pipeline run "$@"   # dvc repro, ending with the closing summary
    ;;
  test)
    setup
    ruff check .
    mypy pipeline
    pytest "$@"
    ;;
  lock)
    # Keeps every locked version that still fits pyproject.toml (pass --upgrade or
    # --upgrade-package NAME to move on); resolves for every platform and Python >= 3.11,
    # with hashes. torch/torchvision stay a matching pair from PyPI (CUDA build on Linux
    # x86-64, which also runs on CPU).
    setup
    "$VENV/bin/uv" pip compile pyproject.toml --extra dev --universal \
      --fork-strategy fewest --generate-hashes --index-url https://pypi.org/simple \
      -o requirements.lock "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test|lock [args for dvc repro or pytest]" >&2
    exit 2
    ;;
esac
