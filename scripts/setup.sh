#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment; safe to run again and again.
#   scripts/setup.sh [VENV]        (default .venv; `make demo` and `make test` call this first)
# Versions: the tested set in constraints.txt. CONSTRAINTS= (empty) installs the newest releases instead
# (`make test-latest`, in a throwaway environment), CONSTRAINTS=path another set.
# torch comes first, so that nothing pulls a torch of the wrong kind: on a machine without an NVIDIA GPU the
# CPU build (PyTorch's CPU wheel index, or a CPU wheel the machine's pip already finds), else PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
constraints="${CONSTRAINTS-constraints.txt}"
constraint_args=()
[ -n "$constraints" ] && constraint_args=(-c "$constraints")

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip)

if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found: torch==$torch_version with CUDA from PyPI"
        "${pip[@]}" install "torch==$torch_version"
    else
        # "+cpu" builds sort above PyPI's CUDA build of the same version, so pip takes the CPU one. An index
        # that cannot be reached is skipped at once (--retries 0), e.g. where a local CPU wheel is found anyway.
        echo "setup: no NVIDIA GPU: the CPU build of torch==$torch_version (no CUDA packages)"
        "${pip[@]}" install --retries 0 --timeout 15 "torch==$torch_version" \
            --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
    fi
fi

# The package and its test extras, again only when pyproject.toml changed since the last install. The dev extras
# include deepspeed (tests/test_deepspeed.py runs ZeRO-2 on 2 CPU processes): a pure-Python install whose CPU
# communication op is compiled with g++ on first use, into ~/.cache/torch_extensions.
stamp="$venv/.train-mrpc-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || { [ -n "$constraints" ] && [ "$constraints" -nt "$stamp" ]; }; then
    "${pip[@]}" install "${constraint_args[@]}" -e ".[dev]"
    if [ -n "$constraints" ]; then
        # The environment is the lock: what an earlier lock installed and this one dropped goes, so that an
        # existing .venv cannot import a package a fresh clone would not have.
        unlocked=()
        while read -r name; do [ -n "$name" ] && unlocked+=("$name"); done \
            < <("$venv/bin/python" scripts/compare_lock.py --unlocked "$constraints")
        if [ "${#unlocked[@]}" -gt 0 ]; then
            echo "setup: removing packages $constraints does not list: ${unlocked[*]}"
            "${pip[@]}" uninstall -y -q "${unlocked[@]}"
        fi
    fi
    touch "$stamp"
fi
