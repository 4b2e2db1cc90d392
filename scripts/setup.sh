#!/usr/bin/env bash
# Installs every Debian package moe needs. Idempotent: packages already present are skipped,
# so a second run costs only a dpkg query. Works on a fresh Debian 12 with the base toolchain.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libdnnl-dev            # oneDNN: GEMM with pre-packed weights (fp32 and bf16)
  nlohmann-json3-dev     # config / checkpoint headers
  libcli11-dev           # command line parsing
  libgtest-dev           # unit tests
  libstb-dev             # PNG writing for plots
  python3 python3-numpy python3-torch   # PyTorch reference model for parity tests (tests/ref/)
  libpcre2-dev           # Hugging Face tokenizers' regex pre-tokenizers (Unicode classes, lookahead)
  libicu-dev             # NFC normalisation for tokenizer.json normalizers
  libcpp-httplib-dev     # moe serve: HTTP server (cpp-httplib 0.11)
  curl                   # the server tests' error-case requests
  chromium               # headless browser check of moe serve's chat page (tests/serve/test_chat_page.py)
  python3-venv           # scripts/oracle_venv.sh: pinned PyPI oracles (tokenizers, jinja2, gguf, ...)
  clang libclang-rt-14-dev   # libFuzzer targets for the file parsers (scripts/fuzz.sh)
  openmpi-bin libopenmpi-dev   # data-parallel training over MPI (src/dist, docs/distributed.md)
  libopenblas0-pthread   # a real BLAS for the PyTorch reference (netlib libblas3 would make the
                         # speed comparison in bench/ meaninglessly easy)
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
