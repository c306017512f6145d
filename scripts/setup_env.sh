#!/usr/bin/env bash
# Create (once) the project's virtual environment and install the pinned dependencies, fast-reid
# (--no-deps: its wheel pins torch 1.13) and this repository in editable mode.
# Idempotent: a stamp of the requirement files and the checkout path makes re-runs instant.
# Environment: FASTREID_EXT_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTREID_EXT_VENV:-.venv}
PY=${PYTHON:-python3}
stamp_file="$VENV/.fastreid_ext_stamp"
stamp=$( (cat requirements/*.txt pyproject.toml; pwd) | sha256sum | cut -c1-16)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi
echo "[setup_env] installing into $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# Some machines cap torchvision below the pinned 0.29.2 through a global pip constraint file;
# our own pins (requirements/lock.txt) are the constraints that apply here.
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install -q -r requirements/base.txt -r requirements/dev.txt \
  -c requirements/lock.txt
"$VENV/bin/python" -m pip install -q --no-deps -r requirements/fastreid.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import fastreid_ext, propot, cpcl, csdn" >/dev/null
echo "$stamp" > "$stamp_file"
echo "[setup_env] done: $VENV"
