#!/usr/bin/env bash
# The test suite: install, build, run every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
cd build
ctest --output-on-failure -j"$(nproc)" --timeout 900
