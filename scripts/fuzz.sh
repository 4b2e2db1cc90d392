#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/fuzz_*.cc) with clang + ASan + UBSan into build-fuzz/ and runs
# each for SECONDS (default 60) over its committed corpus fuzz/corpus/NAME (new inputs go to a
# scratch copy, so the committed corpus changes only by hand), with fuzz/dict/NAME.dict as its
# dictionary when there is one. Exits non-zero on the first crash,
# leak or sanitizer report; the reproducer is left in build-fuzz/crash-*.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"; shift || true
scripts/setup.sh
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_FUZZ=ON \
  -DMOE_SANITIZE=ON -DMOE_BUILD_TESTS=OFF -DMOE_WITH_ONEDNN=OFF >/dev/null
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in fuzz/fuzz_*.cc; do [ -e "$f" ] && targets+=("$(basename "$f" .cc)"); done
fi
if [ ${#targets[@]} -eq 0 ]; then echo "fuzz: no targets in fuzz/" >&2; exit 0; fi
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"
export ASAN_OPTIONS="detect_leaks=1:halt_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
for t in "${targets[@]}"; do
  name="${t#fuzz_}"
  work="build-fuzz/corpus-$name"
  rm -rf "$work"; mkdir -p "$work"
  if [ -d "fuzz/corpus/$name" ]; then cp -r "fuzz/corpus/$name/." "$work/"; fi
  echo "fuzz: $t for ${secs}s" >&2
  log="build-fuzz/$t.log"
  dict=()
  if [ -f "fuzz/dict/$name.dict" ]; then dict=(-dict="fuzz/dict/$name.dict"); fi
  if ! "build-fuzz/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 -artifact_prefix="build-fuzz/$t-" \
       "${dict[@]}" "$work" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t found a failing input (build-fuzz/$t-crash-*; log $log)" >&2
    exit 1
  fi
  grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$log" | sed "s/^/fuzz: $t /" >&2
done
