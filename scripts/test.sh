#!/usr/bin/env bash
# Builds cinfer and runs the whole test suite, on a fresh machine too (installs what is missing).
#
#   0. the include check (scripts/check_layers.sh): no include points up a layer
#   1. release build (the CUDA code compiles when nvcc is present; GPU tests skip without a GPU)
#   2. AddressSanitizer + UndefinedBehaviorSanitizer build without CUDA (so -DCINFER_CUDA=OFF is
#      proven to build as well): the whole suite again, bad-input tests included
#   3. the libFuzzer targets (safetensors header, config.json, tokenizer.json, bench's dataset,
#      serve's request bodies) built with clang,
#      each run for FUZZ_SECONDS (default 30) over its seed corpus
#
# Environment: JOBS (default: nproc), FUZZ_SECONDS, SKIP_FUZZ=1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install_deps.sh
jobs=${JOBS:-$(nproc)}
fuzz_seconds=${FUZZ_SECONDS:-30}

section() { printf '\n==== %s ====\n' "$*"; }

section "layers (every #include points down: README.md, Layout)"
scripts/check_layers.sh --self-test
scripts/check_layers.sh

section "release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
section "tests (release)"
(cd build && ctest --output-on-failure -j "$jobs")

section "sanitizer build (ASan + UBSan, CINFER_CUDA=OFF)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCINFER_SANITIZE=ON -DCINFER_CUDA=OFF
cmake --build build-asan -j "$jobs"
section "tests (sanitizers)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$jobs")

if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  section "fuzzers (${fuzz_seconds}s each)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCINFER_FUZZ=ON -DCINFER_CUDA=OFF -DCINFER_TESTS=OFF
  cmake --build build-fuzz -j "$jobs"
  for target in safetensors config tokenizer bench_dataset serve_stop serve_request; do
    corpus=$(mktemp -d)
    cp -r "tests/fuzz/corpus/$target/." "$corpus/"
    # new inputs go to a scratch copy, so the committed corpus stays as it is
    "./build-fuzz/fuzz_$target" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 "$corpus" 2>&1 | tail -n 12
    rm -rf "$corpus"
  done
fi

section "all tests passed"
