#!/usr/bin/env bash
# Create (once) the project's virtual environment and install, pinned to the tested releases:
#   1. the runtime and test dependencies (requirements/base.txt, dev.txt) and faiss
#      (requirements/faiss-cpu.txt, or faiss-gpu.txt with FASTREID_EXT_FAISS=gpu), constrained by
#      requirements/lock.txt;
#   2. fast-reid with --no-deps (requirements/fastreid.txt): its metadata pins torch 1.13 and
#      would replace torch 2 -- the dependencies it really needs are in requirements/base.txt;
#   3. this repository in editable mode (console scripts fastreid-ext-train, ...).
# Idempotent: a stamp of the requirement files, this script, the faiss choice and the checkout
# path makes re-runs instant. Switching FASTREID_EXT_FAISS removes the other faiss first (both
# install the module "faiss" and would overwrite each other).
# Environment: FASTREID_EXT_VENV (default .venv), PYTHON (default python3),
# FASTREID_EXT_FAISS (cpu, the default, or gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FASTREID_EXT_VENV:-.venv}
PY=${PYTHON:-python3}
FAISS=${FASTREID_EXT_FAISS:-cpu}
case "$FAISS" in
  cpu) OTHER=gpu ;;
  gpu) OTHER=cpu ;;
  *) echo "[setup_env] FASTREID_EXT_FAISS must be cpu or gpu, not '$FAISS'" >&2; exit 2 ;;
esac
stamp_file="$VENV/.fastreid_ext_stamp"
stamp=$( (cat requirements/*.txt pyproject.toml setup.py scripts/setup_env.sh
  echo "faiss=$FAISS"; pwd) | sha256sum | cut -c1-16)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  exit 0
fi
echo "[setup_env] installing into $VENV (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip "$@"; }
# A pip constraint file set for the whole machine (PIP_CONSTRAINT, e.g. one that caps torchvision
# below the pinned 0.29.2) would make the pins unsatisfiable; requirements/lock.txt is the
# constraint file that applies here.
if [ "${PIP_CONSTRAINT:-}" != "/dev/null" ]; then
  echo "[setup_env] setting PIP_CONSTRAINT=/dev/null for these installs (it was" \
    "'${PIP_CONSTRAINT:-unset}'): requirements/lock.txt pins every package instead of a" \
    "machine-wide constraint file"
fi
export PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
if pip_ show -q "faiss-$OTHER" 2>/dev/null; then
  echo "[setup_env] FASTREID_EXT_FAISS=$FAISS: removing faiss-$OTHER (and the packages only it" \
    "needs) before installing faiss-$FAISS"
  # names in requirements/faiss-$OTHER.txt that faiss-$FAISS does not list
  mapfile -t stale < <(grep -vE '^\s*(#|$)' "requirements/faiss-$OTHER.txt" | cut -d= -f1 |
    grep -vxFf <(grep -vE '^\s*(#|$)' "requirements/faiss-$FAISS.txt" | cut -d= -f1))
  pip_ uninstall -y -q "${stale[@]}"
  # if both were installed, the removal deleted files of the other: reinstall it whole
  if pip_ show -q "faiss-$FAISS" 2>/dev/null; then
    pip_ install -q --force-reinstall --no-deps -r "requirements/faiss-$FAISS.txt"
  fi
fi
if pip_ show -q fastreid 2>/dev/null; then
  echo "[setup_env] pip may report fast-reid's torch 1.13 pin as a conflict below: expected," \
    "fast-reid runs on torch 2 through fastreid_ext's compatibility fixes"
fi
pip_ install -q -r requirements/base.txt -r "requirements/faiss-$FAISS.txt" \
  -r requirements/dev.txt -c requirements/lock.txt
echo "[setup_env] installing fast-reid without its dependencies (pip install --no-deps" \
  "fastreid==1.4.0): its metadata pins torch 1.13"
pip_ install -q --no-deps -r requirements/fastreid.txt
pip_ install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import fastreid_ext, propot, cpcl, csdn, faiss" >/dev/null
echo "$stamp" > "$stamp_file"
echo "[setup_env] done: $VENV"
