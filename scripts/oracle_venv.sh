#!/usr/bin/env bash
# Creates (once) a virtual environment with the pinned Python oracles and prints its python path.
#   scripts/oracle_venv.sh            # light oracles: tokenizers, jinja2, safetensors, gguf, numpy
#   scripts/oracle_venv.sh --torch    # also torch + transformers (several GB with CUDA wheels)
# The venv lives in ${MOE_VENV:-$HOME/.cache/moe/venv-oracle}; a stamp of the requirement files
# makes later runs a no-op. Needs python3-venv (scripts/setup.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${MOE_VENV:-$HOME/.cache/moe/venv-oracle}"
reqs=("$here/requirements-oracle.txt")
if [ "${1:-}" = "--torch" ]; then reqs+=("$here/requirements-torch.txt"); fi
stamp="$venv/.stamp-$(cat "${reqs[@]}" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then echo "$venv/bin/python"; exit 0; fi
if [ ! -x "$venv/bin/python" ]; then
  echo "oracle_venv: creating $venv" >&2
  /usr/bin/python3 -m venv "$venv" >&2
fi
for r in "${reqs[@]}"; do
  echo "oracle_venv: installing $(basename "$r")" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$r" >&2
done
touch "$stamp"
echo "$venv/bin/python"
