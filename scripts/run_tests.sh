#!/usr/bin/env bash
# Install what is needed (idempotent), lint, then run the tests in two tiers on CPU:
#   1. the unit tier, pytest -m "not slow" (about 2 minutes), so a broken unit fails fast;
#   2. the slow tier, pytest -m slow: end-to-end runs (training subprocesses, gloo process groups,
#      the wheel install).
# Both print the 15 slowest tests (--durations=15). Extra arguments go to both pytest runs, e.g.
#   bash scripts/run_tests.sh tests/test_compat.py -x
# A tier that selects no test (exit status 5) counts as passed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${FASTREID_EXT_VENV:-.venv}
# One thread per process: two threads on two cores is many times slower.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
run_tier() {
  local name=$1 marker=$2
  shift 2
  echo "[run_tests] $name tier: pytest -m \"$marker\""
  local rc=0
  "$VENV/bin/python" -m pytest -q -m "$marker" --durations=15 "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
    echo "[run_tests] $name tier failed (pytest exit status $rc)" >&2
    exit "$rc"
  fi
}
run_tier unit "not slow" "$@"
run_tier slow "slow" "$@"
echo "[run_tests] both tiers passed"
