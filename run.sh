#!/usr/bin/env bash
# One entry point for people and CI:
#   bash run.sh demo   set up .venv if needed, then run the whole pipeline (dvc repro)
#   bash run.sh test   set up .venv if needed, then run the test suite
# Extra arguments go to dvc repro or pytest.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  # Re-install when pyproject.toml changed since the last install.
  if [ ! -x "$VENV/bin/python" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "setting up $VENV (first run downloads PyTorch and friends, a few GB)..."
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    # torch and torchvision are left for pip to pair (see pyproject.toml).
    "$VENV/bin/python" -m pip install -e ".[dev]"
    touch "$VENV/.installed"
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
    dvc repro "$@"
    dvc metrics show
    ;;
  test)
    setup
    ruff check .
    mypy pipeline
    pytest "$@"
    ;;
  *)
    echo "usage: bash run.sh demo|test [args for dvc repro or pytest]" >&2
    exit 2
    ;;
esac
