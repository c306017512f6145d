#!/usr/bin/env bash
# Install what is needed (idempotent), then lint and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${FASTREID_EXT_VENV:-.venv}
# One thread per process: two threads on two cores is many times slower.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -q "$@"
