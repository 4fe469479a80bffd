#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: builds cinfer for sm_90 (H100/H200), runs the GPU
# tests, `cinfer compare` on every fixture in f32, bf16 and fp16 with each attention kind (eager,
# sdpa, flash), compute-sanitizer on short runs, a short decode benchmark, the attention
# micro-benchmark beside torch, the decode GEMV beside cuBLAS (bench_matmul), and prints a summary
# table last.
#
# The GPU machine has nvcc, cuBLAS, CMake and a compiler but neither cJSON nor GoogleTest, and
# nothing can be installed there: run scripts/fetch_gpu_deps.sh on a Debian machine first and
# carry .deps/ along. The .debs are unpacked into $BUILD_DIR/deps-root (dpkg -x, or ar + tar where
# there is no dpkg); GoogleTest is built from its source package with this machine's compiler
# (the prebuilt Debian 12 archive is the fallback), and CMake is pointed at both.
#
#   scripts/gpu_check.sh                 everything
#   scripts/gpu_check.sh --build-only    unpack, configure, build (no GPU needed)
#   scripts/gpu_check.sh --no-build      the checks only, on the build a --build-only call left
#                                        (two calls fit a 10-minute limit per command better)
#   scripts/gpu_check.sh --only a,b,c    only these steps after the build, in the script's order:
#                                        gpu-tests cpu-tests compare sanitizer bench attention
#                                        matmul figures big (e.g. --no-build --only figures first
#                                        when device time is short)
#   scripts/gpu_check.sh --hide-system   also hide the system's cJSON/GoogleTest from CMake, to
#                                        prove on a machine that has them that .deps suffices
# Environment: JOBS (default nproc), BUILD_DIR (default build-gpu), CUDA_ARCH (default 90),
#   GPU_CHECK_BIG=1 adds the steps `figures` (the real shapes of bench/shapes with random weights,
#   beside transformers: the issue's figures) and `big` (a 1.2B-parameter random DiffLlama from
#   scripts/make_fixtures.py --big, run and compared), which need torch + transformers and minutes;
#   GPU_CHECK_ATTN picks the attention kinds of `figures` (default auto). Logs go to $BUILD_DIR/gpu_check/ and,
#   when $OUT is set (the device tool's output folder), are copied there too.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

build_only=0
no_build=0
hide_system=0
only=""
steps=",gpu-tests,cpu-tests,compare,sanitizer,bench,attention,matmul,figures,big,"
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1 ;;
    --no-build) no_build=1 ;;
    --hide-system) hide_system=1 ;;
    --only)
      only=${2:-}
      shift
      for step in ${only//,/ }; do
        [[ "$steps" == *",$step,"* ]] || { echo "gpu_check: unknown step '$step' (steps:${steps//,/ })" >&2; exit 2; }
      done
      [ -n "$only" ] || { echo "gpu_check: --only needs a list of steps" >&2; exit 2; } ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
# whether a step runs: the --only list if given; else every step but figures and big, which run
# with GPU_CHECK_BIG=1
want() {
  if [ -n "$only" ]; then [[ ",$only," == *",$1,"* ]]; return; fi
  case "$1" in figures | big) [ "${GPU_CHECK_BIG:-0}" = 1 ] ;; *) true ;; esac
}
jobs=${JOBS:-$(nproc)}
build=${BUILD_DIR:-build-gpu}
arch=${CUDA_ARCH:-90}
logs="$build/gpu_check"
mkdir -p "$logs"
export PATH="$PATH:/usr/local/cuda/bin"

summary=()   # "step|result|detail"
failures=0
record() { # step result detail
  summary+=("$1|$2|$3")
  [ "$2" = ok ] || [ "$2" = skipped ] || failures=$((failures + 1))
}
section() { printf '\n==== %s ====\n' "$*"; }
print_summary() {
  section "summary"
  printf '%-44s %-8s %s\n' "step" "result" "detail"
  printf '%-44s %-8s %s\n' "----" "------" "------"
  for row in "${summary[@]}"; do
    IFS='|' read -r step result detail <<<"$row"
    printf '%-44s %-8s %s\n' "$step" "$result" "$detail"
  done
  printf '\n%d step(s) failed\n' "$failures"
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then cp -r "$logs" "$OUT/" 2>/dev/null || true; fi
}
finish() { print_summary; [ "$failures" -eq 0 ]; exit $?; }

if [ "$no_build" = 1 ]; then
  if [ ! -x "$build/cinfer" ]; then
    record "build" FAIL "--no-build, but $build/cinfer does not exist: run --build-only first"
    finish
  fi
  record "build" ok "reused $build (--no-build)"
else
# ---- 1. dependencies from .deps ----------------------------------------------------------------
section "dependencies (.deps)"
deps="$repo/.deps"
root="$repo/$build/deps-root" # unpacked here, per machine: .deps itself only holds the .debs
if ! ls "$deps"/libcjson-dev_*.deb "$deps"/libgtest-dev_*.deb >/dev/null 2>&1; then
  record "dependencies" FAIL ".deps/*.deb missing: run scripts/fetch_gpu_deps.sh on a Debian machine"
  finish
fi
rm -rf "$root"
mkdir -p "$root"
for deb in "$deps"/*.deb; do
  if command -v dpkg >/dev/null; then
    dpkg -x "$deb" "$root"
  else # a .deb is an ar archive holding data.tar.*
    tmp=$(mktemp -d)
    (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$root")
    rm -rf "$tmp"
  fi
done
multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
cjson_include="$root/usr/include"
cjson_library=$(ls "$root"/usr/lib/*/libcjson.so 2>/dev/null | head -n 1)
if [ ! -f "$cjson_include/cjson/cJSON.h" ] || [ -z "$cjson_library" ]; then
  record "dependencies" FAIL "cJSON not found in the unpacked .debs"
  finish
fi

# GoogleTest from its source package, with this machine's compiler; else Debian's prebuilt one
gtest_prefix="$repo/$build/gtest" # built with this machine's compiler
gtest_how="built from source"
if [ ! -f "$gtest_prefix/lib/cmake/GTest/GTestConfig.cmake" ] &&
   [ ! -f "$gtest_prefix/lib64/cmake/GTest/GTestConfig.cmake" ]; then
  if [ -d "$root/usr/src/googletest" ] &&
     cmake -S "$root/usr/src/googletest" -B "$build/gtest-build" -DCMAKE_BUILD_TYPE=Release \
       -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$gtest_prefix" \
       >"$logs/gtest.log" 2>&1 &&
     cmake --build "$build/gtest-build" -j "$jobs" >>"$logs/gtest.log" 2>&1 &&
     cmake --install "$build/gtest-build" >>"$logs/gtest.log" 2>&1; then
    :
  else
    gtest_prefix="$root/usr"
    gtest_how="Debian's prebuilt archive (source build failed: $logs/gtest.log)"
  fi
fi
record "dependencies" ok "cJSON $(basename "$cjson_library"), GoogleTest $gtest_how"

# ---- 2. configure and build ---------------------------------------------------------------------
section "configure and build (sm_$arch)"
cmake_args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCINFER_CUDA=ON
  -DCMAKE_CUDA_ARCHITECTURES="$arch"
  -DCJSON_INCLUDE_DIR="$cjson_include" -DCJSON_LIBRARY="$cjson_library"
  -DCMAKE_PREFIX_PATH="$gtest_prefix")
if [ "$hide_system" = 1 ]; then
  # the system's copies out of CMake's sight (libm named explicitly, since its folder is hidden)
  cmake_args+=("-DCMAKE_IGNORE_PATH=/usr/include;/usr/lib/$multiarch;/usr/lib/$multiarch/cmake;/usr/lib/$multiarch/cmake/GTest;/usr/lib/cmake/GTest"
    "-DMATH_LIBRARY=/usr/lib/$multiarch/libm.so")
fi
if ! cmake "${cmake_args[@]}" >"$logs/configure.log" 2>&1; then
  tail -n 30 "$logs/configure.log"
  record "configure" FAIL "see $logs/configure.log"
  finish
fi
grep -E "CJSON_(INCLUDE_DIR|LIBRARY)|GTest_DIR" "$build/CMakeCache.txt" | grep -v "^//" \
  | tee "$logs/found.log"
record "configure" ok "$(grep -o 'CUDA code enabled.*' "$logs/configure.log" | head -n 1)"
if ! cmake --build "$build" -j "$jobs" >"$logs/build.log" 2>&1; then
  grep -E "error|Error" "$logs/build.log" | head -n 30
  record "build" FAIL "see $logs/build.log"
  finish
fi
record "build" ok "$(grep -c 'warning' "$logs/build.log") warning line(s)"
fi # no_build
[ "$build_only" = 1 ] && finish

cli="$build/cinfer"
section "the GPU"
nvidia-smi -L 2>&1 | tee "$logs/nvidia-smi.log"
"$cli" inspect --model tests/fixtures/llama_mha | grep -E "^GPU" | tee -a "$logs/nvidia-smi.log"

# ---- 3. tests -----------------------------------------------------------------------------------
if want gpu-tests; then
  section "GPU tests (ctest -R cuda)"
  # verbose, so that the log keeps the figures the tests print ("[cinfer] ... logits max ...")
  (cd "$build" && ctest -R cuda -V -j 4) >"$logs/ctest_cuda.log" 2>&1
  gpu_tests=$?
  grep "\[cinfer\]" "$logs/ctest_cuda.log" | sed 's/^[0-9]*: //' | sort -u >"$logs/measured.log"
  tail -n 15 "$logs/ctest_cuda.log"
  n_skipped=$(grep -c "(Skipped)" "$logs/ctest_cuda.log")
  line=$(grep -E "tests passed|tests failed" "$logs/ctest_cuda.log" | tail -n 1)
  if [ "$gpu_tests" -eq 0 ] && [ "$n_skipped" -le 3 ]; then
    # three tests skip on purpose when a GPU is present (they check the no-GPU messages)
    record "GPU tests" ok "$line; $n_skipped skipped"
  else
    record "GPU tests" FAIL "$line; $n_skipped skipped (see $logs/ctest_cuda.log)"
  fi
fi

if want cpu-tests; then
  section "all other tests (CPU)"
  (cd "$build" && ctest -E cuda -j "$jobs") >"$logs/ctest_cpu.log" 2>&1
  cpu_tests=$?
  record "CPU tests" "$([ $cpu_tests -eq 0 ] && echo ok || echo FAIL)" \
    "$(grep -E 'tests passed|tests failed' "$logs/ctest_cpu.log" | tail -n 1)"
fi

# ---- 4. compare on every fixture ------------------------------------------------------------------
if want compare; then
  section "cinfer compare"
  tokens="1 15 7 42 9 3 27 11 100 64 5 77"
  for fixture in tests/fixtures/*/ models/diffllama-tiny/; do
    name=$(basename "$fixture")
    [ -f "$fixture/config.json" ] || continue
    for dtype_attn in {f32,bf16,fp16}_{eager,sdpa,flash}; do
      dtype=${dtype_attn%_*} attn=${dtype_attn#*_}
      log="$logs/compare_${name}_${dtype}_${attn}.log"
      "$cli" compare --model "$fixture" --dtype "$dtype" --attn "$attn" --tokens "$tokens" >"$log" 2>&1
      rc=$?
      logits=$(grep "^logits" "$log" | awk '{print "max " $2 ", rel L2 " $3}')
      worst=$(grep -E "^(embedding|layer|final norm)" "$log" | awk '{print $(NF-1)}' | sort -g | tail -n 1)
      top1=$(grep "^top-1" "$log" | awk '{print $3 "/" $5}')
      if [ -n "$logits" ]; then
        detail="logits $logits; worst hidden rel L2 ${worst:-?}; top-1 ${top1:-?}"
      else
        detail=$(tail -n 1 "$log")
      fi
      record "compare $name $dtype $attn" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$detail"
    done
  done
fi

# ---- 5. compute-sanitizer ---------------------------------------------------------------------------
if want sanitizer; then
  section "compute-sanitizer"
  if command -v compute-sanitizer >/dev/null; then
    for run in "memcheck diffllama_gqa2_llama3 bf16 flash" "memcheck llama_gqa_llama3 f32 flash" \
               "memcheck llama_yarn fp16 sdpa" "memcheck diffllama_gqa4 bf16 sdpa" \
               "memcheck llama_mha f32 eager" "racecheck diffllama_gqa4 bf16 flash" \
               "racecheck llama_gqa_llama3 fp16 flash" "racecheck diffllama_mha f32 sdpa" \
               "synccheck diffllama_gqa2_llama3 bf16 flash"; do
      read -r tool fixture dtype attn <<<"$run"
      log="$logs/sanitizer_${tool}_${fixture}_${dtype}_${attn}.log"
      compute-sanitizer --tool "$tool" --error-exitcode 99 "$cli" run --model "tests/fixtures/$fixture" \
        --backend cuda --dtype "$dtype" --attn "$attn" --tokens "1 15 7 42 9" --max-new-tokens 6 \
        >"$log" 2>&1
      rc=$?
      errors=$(grep -o "ERROR SUMMARY: [0-9]* error" "$log" | tail -n 1)
      record "sanitizer $tool $fixture $dtype $attn" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
        "${errors:-no summary (rc $rc)}"
    done
  else
    record "compute-sanitizer" FAIL "not found in PATH (looked in /usr/local/cuda/bin too)"
  fi
fi

# ---- 6. a short bench ----------------------------------------------------------------------------------
bench() { # label model backend dtype n_new: timed generation through `cinfer run`
  local log="$logs/bench_$1.log"
  "$cli" run --model "$2" --backend "$3" --dtype "$4" --tokens "1 15 7 42 9 3 27 11 100 64" \
    --max-new-tokens "$5" --ctx-size $(( $5 + 16 )) --ignore-eos >/dev/null 2>"$log"
  local rc=$?
  record "bench $1" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
    "$(grep -o 'prompt:.*' "$log" | head -n 1 || true)$([ $rc -eq 0 ] || tail -n 1 "$log")"
}
if want bench; then
  section "bench (decode on a fixture; the real figures need real shapes: --only figures)"
  bench "llama_gqa_llama3 cpu f32" tests/fixtures/llama_gqa_llama3 cpu f32 200
  for dtype in f32 bf16 fp16; do
    bench "llama_gqa_llama3 cuda $dtype" tests/fixtures/llama_gqa_llama3 cuda "$dtype" 200
  done
  # an 8B shape with no checkpoint: random weights drawn in device memory, never on the host, so the
  # host's peak RSS stays far below the 16 GB of weights
  log="$logs/bench_random_llama3-8b.log"
  timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "host peak RSS %M KiB" -o "$logs/rss_random_llama3-8b.txt")
  ${timer[@]+"${timer[@]}"} "$cli" bench --config bench/shapes/llama3-8b.json --random-weights --backend cuda \
    --dtype bf16 -p 16 -n 4 -r 1 --no-ceilings >"$log" 2>&1
  rc=$?
  record "bench llama3-8b (random, drawn on the device) cuda bf16" \
    "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
    "$(cat "$logs/rss_random_llama3-8b.txt" 2>/dev/null || echo 'no /usr/bin/time: RSS not measured'); $(grep -E '\| tg4 \|' "$log" | awk -F'|' '{printf "tg4 %s t/s", $12}')$([ $rc -eq 0 ] || tail -n 1 "$log")"
fi

# ---- 7. the attention kernels alone, beside torch SDPA and transformers' DiffLlama attention -------
if want attention; then
  section "attention micro-benchmark"
  log="$logs/bench_attention.log"
  "$build/bench_attention" --attn eager,sdpa,flash --head-dim 64,128 --seq 512,4096 \
    --variant standard,diff --mode prefill,decode --dtype bf16 -r 3 --output json \
    >"$logs/bench_attention.json" 2>"$log"
  rc=$?
  if [ $rc -eq 0 ] && python3 scripts/bench_attention.py --head-dim 64,128 --seq 512,4096 \
       --mode prefill,decode -r 3 --cinfer-json "$logs/bench_attention.json" \
       >"$logs/bench_attention_table.md" 2>>"$log"; then
    record "attention micro-benchmark" ok "table in $logs/bench_attention_table.md"
    cat "$logs/bench_attention_table.md"
  else
    record "attention micro-benchmark" FAIL "$(tail -n 1 "$log")"
  fi
  "$build/bench_attention" --check-memory --attn eager,sdpa,flash --seq 4096 --head-dim 128 \
    --variant standard,diff >"$logs/check_memory.log" 2>&1
  record "no score matrix in global memory (sdpa, flash)" \
    "$([ $? -eq 0 ] && echo ok || echo FAIL)" "$(tail -n 1 "$logs/check_memory.log")"
fi

# ---- 8. the decode GEMV alone, beside cuBLAS and a copy (Llama-3-8B projections, T = 1..8) ------
if want matmul; then
  section "matmul micro-benchmark (decode GEMV vs cuBLAS)"
  log="$logs/bench_matmul.log"
  "$build/bench_matmul" -T 1,2,4,8 --dtype bf16,fp16 -r 5 --output md >"$logs/bench_matmul.md" 2>"$log"
  rc=$?
  "$build/bench_matmul" -T 1,8 --dtype bf16 --tiles auto,1,2,4 -r 3 --output json \
    >"$logs/bench_matmul_tiles.json" 2>>"$log"
  rc_tiles=$?
  if [ $rc -eq 0 ] && [ $rc_tiles -eq 0 ]; then
    record "matmul micro-benchmark" ok "table in $logs/bench_matmul.md; tile sweep in $logs/bench_matmul_tiles.json"
    cat "$logs/bench_matmul.md"
  else
    # 1: a row's output differs from cuBLAS (MISMATCH in the table) or a shape did not fit
    record "matmul micro-benchmark" FAIL "rc $rc/$rc_tiles: $(grep -m1 MISMATCH "$logs/bench_matmul.md" || tail -n 1 "$log")"
  fi
fi

# ---- 9. the issue's figures: real shapes with random weights, beside transformers --------------
# Llama-3-8B and DiffLlama-8B first (the figures asked for: tg128 against the bandwidth ceiling,
# pp512 against the GEMM ceiling, decode against transformers' sdpa), then the small shapes.
first_number() { grep -E "\| $1 \|" "$2" | head -n 1 | awk -F'|' -v col="$3" '{split($col, a, " "); print a[1]}'; }
if want figures; then
  section "figures: real shapes (random weights, bf16, batch 1) beside transformers"
  for shape in llama3-8b diffllama-8b llama3.2-1b diffllama-0.3b-handcut; do
    log="$logs/bench_shape_$shape.log"
    "$cli" bench --config "bench/shapes/$shape.json" --random-weights --backend cuda \
      --dtype bf16 --attn "${GPU_CHECK_ATTN:-auto}" -p 512 -n 128 -r 3 >"$log" 2>&1
    rc=$?
    record "bench $shape (random) cuda bf16" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
      "$(grep -E '\| (pp512|tg128) \|' "$log" | awk -F'|' '{printf "%s%s t/s,%s; ", $11, $12, $13}')$([ $rc -eq 0 ] || tail -n 1 "$log")"
    hf_log="$logs/bench_hf_$shape.log"
    python3 scripts/bench_hf.py --config "bench/shapes/$shape.json" --device cuda \
      --dtype bfloat16 --attn sdpa -p 512 -n 128 -r 3 >"$hf_log" 2>&1
    rc=$?
    record "transformers $shape cuda bf16 sdpa" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
      "$(grep -E '\| (pp512|tg128) \|' "$hf_log" | awk -F'|' '{printf "%s%s t/s; ", $10, $11}')$([ $rc -eq 0 ] || tail -n 1 "$hf_log")"
    ours=$(first_number tg128 "$log" 12) theirs=$(first_number tg128 "$hf_log" 11)
    if [ -n "$ours" ] && [ -n "$theirs" ]; then
      record "decode vs transformers $shape" ok "tg128 $(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2fx (asked: at least 3x)", a / b}')"
    fi
  done
fi

# ---- 10. a 1.2B random DiffLlama checkpoint through run and compare -------------------------------
if want big; then
  section "a 1.2B DiffLlama checkpoint (scripts/make_fixtures.py --big)"
  big="$build/big"
  if [ -f "$big/config.json" ] || python3 scripts/make_fixtures.py --big "$big" >"$logs/big.log" 2>&1; then
    for dtype in bf16 fp16 f32; do bench "1.2B diffllama cuda $dtype" "$big" cuda "$dtype" 64; done
    "$cli" compare --model "$big" --dtype bf16 --tokens "1 15 7 42 9 3 27 11" >"$logs/compare_big_bf16.log" 2>&1
    record "compare 1.2B diffllama bf16" "$([ $? -eq 0 ] && echo ok || echo FAIL)" \
      "$(grep '^logits' "$logs/compare_big_bf16.log" | awk '{print "max " $2 ", rel L2 " $3}')"
  else
    record "big model" FAIL "scripts/make_fixtures.py --big failed: $logs/big.log"
  fi
fi

finish
