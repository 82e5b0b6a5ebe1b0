#!/usr/bin/env bash
# Build a pinned virtual environment for CI and check it.
#
#   bash .ci/venv.sh PYTHON_VERSION VENV_DIR PINS_FILE [--minimum]
#
# 1. a venv from the interpreter for PYTHON_VERSION (e.g. 3.13; CI_PYTHON_<major><minor> overrides the path);
# 2. everything in PINS_FILE (every line name==version);
# 3. this repository's dependencies (pyproject.toml and requirements.txt) with PINS_FILE as a constraint:
#    pip adds what is missing but cannot replace a pinned version (a clash is an error, as it would
#    be a reinstall in Colab);
# 4. a kernelspec named python3 with this venv's python as an absolute path, in VENV_DIR/share/jupyter
#    (point JUPYTER_PATH there), so notebooks executed with kernel_name="python3" run in this venv;
# 5. .ci/envcheck.py check: the pins hold, the notebook kernel is this venv's python and, with --minimum,
#    every declared lower bound equals its pin.
# A venv whose stamp (pins + these scripts + interpreter) matches is reused (only when VENV_DIR is kept
# between runs, see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$1 venv=$2 pins=$3 mode=${4:-}

find_python() {  # the interpreter for major.minor $1: $CI_PYTHON_XY, python$1 on PATH, or pyenv's
    local v=$1 var="CI_PYTHON_${1//./}" p
    if [[ -n ${!var:-} ]]; then echo "${!var}"; return; fi
    for p in "$(command -v "python$v" || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v"; do
        # a pyenv shim exists for every installed version but only runs the selected ones
        if [[ -n $p && -x $p ]] && "$p" -c 'import venv' 2>/dev/null; then echo "$p"; return; fi
    done
    echo "no Python $v found: install it (pyenv install $v) or set $var" >&2
    return 1
}

# This machine's pip config lists local wheel folders that lack most projects; pip warns once per project.
pip_in() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
export PYDEVD_DISABLE_FILE_VALIDATION=1  # debugpy's frozen-modules warning, once per kernel start

py=$(find_python "$version")
stamp=$(cat "$pins" .ci/venv.sh .ci/envcheck.py requirements.txt pyproject.toml | sha256sum | cut -c1-16)
stamp="$stamp $("$py" -c 'import sys; print(sys.version.split()[0])') $py"
if [[ -f $venv/.ci-stamp && $(cat "$venv/.ci-stamp") == "$stamp" ]]; then
    echo "reusing $venv ($stamp)"
else
    echo "building $venv from $pins with $py"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    # A current pip: the pip that Python 3.9/3.10's venv brings (23.0) backtracks for many minutes over the
    # Jupyter packages that the current one resolves in seconds.
    pip_in install -q --upgrade "pip>=25"
    # torch comes with its CUDA libraries (cuda-toolkit, nvidia-*, triton: about 3 GB, about 45 s from PyPI).
    # It runs on the CPU without a GPU, but not without them: `pip install --no-deps torch` (2.11.0, and
    # 2.3.0 too) fails at `import torch` with "libcudnn.so.9: cannot open shared object file" (libtorch.so
    # links cuDNN, cuBLAS, cuFFT, cuSPARSE, NCCL, NVSHMEM...), and PyPI has no CPU-only Linux x86_64 build.
    pip_in install -q -r "$pins"
    "$venv/bin/python" .ci/envcheck.py deps > "$venv/detr_nb-deps.txt"
    # requirements.txt without its exact pins (the test tools, which each environment pins itself)
    grep -v "==" requirements.txt > "$venv/detr_nb-requirements.txt"
    pip_in install -q -c "$pins" -r "$venv/detr_nb-deps.txt" -r "$venv/detr_nb-requirements.txt"
    "$venv/bin/python" -m ipykernel install --prefix "$venv" --name python3 > /dev/null
    echo "$stamp" > "$venv/.ci-stamp"
fi
JUPYTER_PATH="$venv/share/jupyter" "$venv/bin/python" .ci/envcheck.py check "$pins" $mode
