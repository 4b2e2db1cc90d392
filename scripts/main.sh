#!/usr/bin/env bash
# The main job: install, build, then train the default MoE model on bundled Tiny Shakespeare.
# Extra arguments go to `moe train`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
exec ./build/moe train "$@"
