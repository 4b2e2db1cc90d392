#!/usr/bin/env bash
# Creates (once) the virtual environment with the pinned PyPI PyTorch that bench/train_vs_torch
# measures moe against, and prints its python path. Not part of the test suite: torch's wheel and
# its CUDA dependency wheels are several GB (CPU training uses only torch's own oneDNN / MKL code).
#   bench/torch_venv.sh            # prints e.g. /root/.cache/moe/venv-torch-bench/bin/python
# The venv lives in ${MOE_TORCH_VENV:-$HOME/.cache/moe/venv-torch-bench}; a stamp of the pins makes
# later runs a no-op. Needs python3-venv (scripts/setup.sh installs it) and PyPI access once.
set -euo pipefail
venv="${MOE_TORCH_VENV:-$HOME/.cache/moe/venv-torch-bench}"
# the pins: the newest torch PyPI offered for CPython 3.11 manylinux x86_64 when this was written
# (`pip index versions torch`); numpy silences torch's "numpy not available" warning
pins=("torch==2.15.0" "numpy==2.2.6")
stamp="$venv/.stamp-$(printf '%s\n' "${pins[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then echo "$venv/bin/python"; exit 0; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "torch_venv: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv" >&2
fi
echo "torch_venv: installing ${pins[*]} (several GB the first time)" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" >&2
"$venv/bin/python" -c 'import torch; print("torch_venv: torch", torch.__version__, file=__import__("sys").stderr)' >&2
touch "$stamp"
echo "$venv/bin/python"
