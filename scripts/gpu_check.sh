#!/usr/bin/env bash
# The first run of cinfer's CUDA code, on a machine with an NVIDIA GPU: builds for sm_90 (H100/H200)
# from .deps/ alone, then runs the checks, the most telling first, each leaving its result in the
# output folder as it finishes, so that a run cut off by a time limit still returns what it did.
#
# The GPU machine is a bare Ubuntu-based CUDA image (nvcc, cuBLAS, CMake, ninja, a compiler, Python
# with torch and transformers) that can install nothing. So, on this Debian machine first:
#   scripts/fetch_gpu_deps.sh                         cJSON, PCRE2, GoogleTest .debs into .deps/
#   scripts/gpu_check.sh --hide-system --build-only   the rehearsal: the same build with every
#                                                     -dev package of this machine hidden (see
#                                                     scripts/hide_system_deps.sh), as root; from
#                                                     an empty build-gpu/ on 2 cores 2 min 8 s
#                                                     idle (GoogleTest 21 s, configure 4 s, build
#                                                     100 s), up to 5 min 8 s beside other builds
# then on the GPU machine, each call carrying .deps (device tool: carry [".deps"]):
#   1. scripts/gpu_check.sh --build-only --deadline 560     timeout_s 600: unpack, configure, build
#   2. scripts/gpu_check.sh --no-build --deadline 560       timeout_s 600, straight after 1 (the
#      machine stays warm 30 s, and the build with it; on a fresh machine --no-build builds first)
#   What comes back in $OUT: summary.txt (one line per step, rewritten after every step) and
#   gpu_check_logs.tar.gz (every log, refreshed after every step).
#
# Steps, in this order. The build (--build-only stops after it):
#   deps        unpack .deps/*.deb into $BUILD_DIR/deps-root (dpkg -x, or ar + tar where there is no
#               dpkg); build GoogleTest from its source with this machine's compiler (the prebuilt
#               Debian archive is the fallback); a library missing from .deps fails here, by name
#   configure   CMake, pointed at .deps: PCRE2 linked static (libpcre2-8.a), cJSON's .so found
#               through the build tree's RPATH (fetch_gpu_deps.sh says why)
#   build       only the engine, the CLI, the GPU suites and the micro-benchmarks (targets
#               cinfer_cli test_cuda_ops test_cuda_model test_cuda_engine bench_attention
#               bench_matmul, and where CMake found NCCL test_cuda_comm bench_comm); not the CPU
#               suites, the emulator suites or the fuzzers, which run in CI; then a check that
#               the binaries load with no library missing and that `cinfer inspect` runs
# The checks (--only picks some, in this order whatever the list's order):
#   gpu         the GPU the binaries see (nvidia-smi, cinfer inspect); none: every later step
#               "cannot run here"
#   gpu-tests   the CUDA suites (ctest -R '^cuda\.'): each op and every fixture against the CPU,
#               and the continuous-batching engine (served = alone; logprobs against the CPU)
#   compare     `cinfer compare` on every fixture and models/diffllama-tiny in f32, bf16 and fp16,
#               with each attention kind (eager, sdpa, flash)
#   bench       decode speed on a fixture (CPU and CUDA) and a Llama-3-8B shape, random weights
#   serve       the serving bench (continuous batching) on a Llama-3-8B shape, bf16, random
#               weights: output tokens/s one request at a time and 64 in flight
#   tp          tensor parallelism on the one GPU: test_cuda_comm (skips below 2 GPUs), bench_comm
#               (2 ranks on the GPU: NCCL_MULTI_RANK_GPU_ENABLE=1, NCCL >= 2.30), `cinfer run
#               --tp 2` through the launcher (two processes) against --tp 1 on llama_gqa_llama3 and
#               diffllama-tiny (the same ids), and `cinfer bench` tg128 at tp 1 and 2; pieces that
#               need what is not there (NCCL, >= 2.30) "cannot run here", and fail nothing
#   serve-http  `cinfer serve --backend cuda` under GuideLLM (scripts/bench_serving.sh --server
#               cinfer, concurrency 1, 8, 32): where the build has `serve` (libmicrohttpd found)
#               and .venv-bench has GuideLLM; else "cannot run here", saying which is missing
#   figures     (GPU_CHECK_BIG=1 or --only) the real shapes of bench/shapes beside transformers
#   attention   bench_attention beside torch SDPA (scripts/bench_attention.py), --check-memory
#   matmul      bench_matmul: the decode GEMV beside cuBLAS and a device copy
#   sanitizer   compute-sanitizer memcheck/racecheck/synccheck on short runs
#   ncu         Nsight Compute's speed-of-light section of one short run's first kernels
#   big         (GPU_CHECK_BIG=1 or --only) a 1.2B random DiffLlama: run and compare
#   cpu-tests   (--only) the rest of the suite: builds every other target first (minutes)
# Each step ends as one of: ok; FAIL (with its first failure); cannot run here (the tool's own
# message: compute-sanitizer's "Device not supported", ncu's "LibraryNotLoaded", no GPU; not a
# failure of cinfer); not reached (the time ran out, or an earlier step stopped the run).
#
# Options:
#   --build-only         deps, configure, build; no GPU needed
#   --no-build           reuse $BUILD_DIR's build (on a machine whose build is gone: build first)
#   --only a,b,c         only these checks (names above)
#   --deadline SECONDS   start nothing that cannot finish within SECONDS of the start, and stop a
#                        step that runs past it: what is left is "not reached", and the summary is
#                        written before a device call's timeout_s kills the command (give ~40 s
#                        less than timeout_s). Also GPU_CHECK_DEADLINE.
#   --hide-system        (this Debian machine, root) run the whole script with every -dev package
#                        but the C/C++ toolchain's hidden from the compiler and CMake
#                        (scripts/hide_system_deps.sh), proving that .deps/ suffices
# Environment: JOBS (default nproc), BUILD_DIR (default build-gpu), CUDA_ARCH (default 90),
#   GPU_CHECK_BIG=1 adds figures and big, GPU_CHECK_ATTN (figures' attention kinds, default auto),
#   GPU_CHECK_PAR (default 4) compare runs at a time and processes of isolated tests,
#   GPU_CHECK_FORCE=1 runs the GPU steps even where no GPU is found (to rehearse the script itself),
#   OUT (the device tool's output folder; default $BUILD_DIR/gpu_check).
# Exit status: 0 all ran and passed (or could not run here), 1 a step failed, 2 bad usage, 3 none
# failed but some were not reached.
#
# What the CMake build could do for this script (CMakeLists.txt is not this script's to change):
# an option to configure only the engine, the CLI, the CUDA suites and the benchmarks, so that
# dependencies of other targets (the coming server's libmicrohttpd and libcurl) need not be carried
# to the GPU machine; the targets are named here meanwhile.
# shellcheck disable=SC2016 # the bash -c scripts take their arguments as "$1" "$2", on purpose
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
argv=("$@")

usage() { echo "gpu_check: $*" >&2; exit 2; }
checks=(gpu-tests compare bench serve tp serve-http figures attention matmul sanitizer ncu big cpu-tests)
build_only=0 no_build=0 hide_system=0 only=""
deadline=${GPU_CHECK_DEADLINE:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --build-only) build_only=1 ;;
    --no-build) no_build=1 ;;
    --hide-system) hide_system=1 ;;
    --only)
      only=${2:-}
      [ -n "$only" ] || usage "--only needs a list of steps (${checks[*]})"
      shift
      for step in ${only//,/ }; do
        [[ " ${checks[*]} " == *" $step "* ]] || usage "unknown step '$step' (steps: ${checks[*]})"
      done ;;
    --deadline)
      deadline=${2:-}
      shift ;;
    *) usage "unknown argument '$1'" ;;
  esac
  shift
done
[[ "$deadline" =~ ^[0-9]+$ ]] || usage "--deadline needs a number of seconds, got '$deadline'"
[ "$build_only" = 1 ] && [ "$no_build" = 1 ] && usage "--build-only and --no-build exclude each other"

# --hide-system: the same script again, inside a mount namespace where the system's packages are
# hidden (scripts/hide_system_deps.sh says what and how)
if [ "$hide_system" = 1 ] && [ -z "${GPU_CHECK_HIDDEN:-}" ]; then
  exec "$repo/scripts/hide_system_deps.sh" --deps "$repo/.deps" -- \
    env GPU_CHECK_HIDDEN=1 "$repo/scripts/gpu_check.sh" "${argv[@]}"
fi

jobs=${JOBS:-$(nproc)}
par=${GPU_CHECK_PAR:-4} # processes at a time on the GPU: compare runs, isolated tests
build=${BUILD_DIR:-build-gpu}
arch=${CUDA_ARCH:-90}
logs="$build/gpu_check"
out=${OUT:-$logs}
mkdir -p "$logs" "$out"
build_abs=$(cd "$build" && pwd)
export PATH="$PATH:/usr/local/cuda/bin"
cli="$build/cinfer"
# the build's targets: the engine comes with each; the GPU steps need no other
gpu_targets=(cinfer_cli test_cuda_ops test_cuda_model test_cuda_engine bench_attention bench_matmul)
# ... and where CMake found NCCL (bench_comm exists only then), the tp step's
nccl_targets=(test_cuda_comm bench_comm)

# ---- the summary: one line per step, written out after every change -------------------------------
host=$(hostname 2>/dev/null || cat /etc/hostname 2>/dev/null || echo '?')
revision=$(git rev-parse --short HEAD 2>/dev/null || echo '?') # no .git in the device's copy
steps=()          # planned, in order
declare -A result=() detail=() took=()
details=()        # sub-results: one line per compare run, sanitizer run, ...
current=""        # the step running now
child=""          # its command's pid, for the signal trap
plan() { steps+=("$1"); result[$1]="not reached"; detail[$1]=""; took[$1]=""; }
wanted() { # whether check $1 runs: the --only list, else every check but the opt-in ones
  # (explicit statuses: a bare `return` in the signal trap's call chain returns the trap's status)
  if [ -n "$only" ]; then
    if [[ ",$only," == *",$1,"* ]]; then return 0; else return 1; fi
  fi
  case "$1" in
    figures | big) if [ "${GPU_CHECK_BIG:-0}" = 1 ]; then return 0; else return 1; fi ;;
    cpu-tests) return 1 ;;
    *) return 0 ;;
  esac
}
write_summary() {
  local tmp="$out/.summary.txt.tmp" step n_fail=0 n_cannot=0 n_not=0 n_ok=0
  {
    echo "cinfer scripts/gpu_check.sh ${argv[*]}"
    echo "$(date -u '+%Y-%m-%d %H:%M:%S UTC') on $host, git $revision, ${SECONDS}s since the start$([ "$deadline" -gt 0 ] && echo ", deadline ${deadline}s")"
    echo
    printf '%-10s %-15s %6s  %s\n' step result time detail
    for step in "${steps[@]}"; do
      printf '%-10s %-15s %6s  %s\n' "$step" "${result[$step]}" "${took[$step]}" "${detail[$step]}"
      case "${result[$step]}" in
        ok) n_ok=$((n_ok + 1)) ;; FAIL) n_fail=$((n_fail + 1)) ;;
        "cannot run here") n_cannot=$((n_cannot + 1)) ;; *) n_not=$((n_not + 1)) ;;
      esac
    done
    local not_asked=()
    if [ "$build_only" = 0 ]; then
      for step in "${checks[@]}"; do wanted "$step" || not_asked+=("$step"); done
    fi
    [ ${#not_asked[@]} -eq 0 ] || echo "not asked: ${not_asked[*]} (--only; figures and big also with GPU_CHECK_BIG=1)"
    echo
    echo "$n_ok ok, $n_fail failed, $n_cannot could not run here, $n_not not reached"
    if [ ${#details[@]} -gt 0 ]; then
      echo
      echo "details:"
      printf '  %s\n' "${details[@]}"
    fi
    echo
    echo "logs: $logs/$([ "$out" != "$logs" ] && echo " (also $out/gpu_check_logs.tar.gz)")"
  } >"$tmp"
  mv -f "$tmp" "$out/summary.txt"
}
pack_logs() { # the logs as one file in $OUT (the device tool returns at most 8 files)
  [ "$out" = "$logs" ] && return 0
  tar -czf "$out/.logs.tar.gz.tmp" -C "$build" gpu_check 2>/dev/null &&
    mv -f "$out/.logs.tar.gz.tmp" "$out/gpu_check_logs.tar.gz"
}
step_start() { # step: the step now running; says so in the summary in case the run ends here
  current=$1
  step_t0=$SECONDS
  result[$1]="not reached"
  detail[$1]="started at ${SECONDS}s; the run ended during this step"
  printf '\n==== %s ====\n' "$1"
  write_summary
}
step_end() { # result detail
  result[$current]=$1
  detail[$current]=$(printf '%s' "${2%; }" | tr '\n' ' ' | cut -c1-400)
  took[$current]="$((SECONDS - step_t0))s"
  printf '%s: %s %s\n' "$current" "$1" "${detail[$current]}"
  current=""
  write_summary
  pack_logs
}
finish() {
  local step rc=0
  for step in "${steps[@]}"; do
    case "${result[$step]}" in FAIL) rc=1 ;; "not reached") [ $rc -eq 1 ] || rc=3 ;; esac
  done
  write_summary
  pack_logs
  printf '\n==== summary (%s) ====\n' "$out/summary.txt"
  cat "$out/summary.txt"
  exit $rc
}
stop_all() { # reason: every step not yet run is not reached, for this reason
  local step
  for step in "${steps[@]}"; do
    [ "${result[$step]}" = "not reached" ] && [ -z "${took[$step]}" ] && detail[$step]=$1
  done
  finish
}
# shellcheck disable=SC2317 # called by the traps below
on_signal() {
  trap - TERM INT
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  if [ -n "$current" ]; then
    result[$current]="not reached"
    detail[$current]="cut off by SIG$1 ${SECONDS}s after the start, $((SECONDS - step_t0))s into this step (a time limit?)"
    [ "$current" = compare ] && # its runs are read once all are done: say how many were
      detail[$current]+="; $(find "$logs" -name 'compare_*_*.log' | wc -l) runs had finished (their logs: compare_*.log)"
    took[$current]="$((SECONDS - step_t0))s"
    current=""
  fi
  stop_all "the run was stopped (SIG$1)"
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# run LOG CAP CMD...: CMD, its output in LOG (LOG "-": not kept), stopped after CAP seconds or
# at the deadline, whichever comes first. Sets rc, and cut to "" or "cap" or "deadline".
run() {
  local log=$1 cap=$2 limit cut_by=cap t0=$SECONDS
  shift 2
  [ "$log" = - ] && log=/dev/null
  limit=$cap
  if [ "$deadline" -gt 0 ] && [ $((deadline - SECONDS - 5)) -lt "$limit" ]; then
    limit=$((deadline - SECONDS - 5))
    cut_by=deadline
  fi
  cut=""
  if [ "$limit" -le 0 ]; then rc=124; cut=deadline; return 0; fi
  # in the background, so that the signal trap runs at once, not after the command
  timeout -k 10 "$limit" "$@" </dev/null >"$log" 2>&1 &
  child=$!
  wait "$child"
  rc=$?
  child=""
  # 124: timeout's TERM; 137: its KILL 10 s later (or another KILL: the kernel's OOM killer, say)
  if [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $((SECONDS - t0)) -ge "$limit" ]; }; then cut=$cut_by; fi
}
time_left() { # seconds: whether that many seconds are left before the deadline
  [ "$deadline" -eq 0 ] || [ $((deadline - SECONDS)) -ge "$1" ]
}
cut_note() { # cap: what a cut command means, for a detail ("" when it was not cut)
  case "$cut" in
    cap) echo "timed out after its ${1}s limit (a hang?); " ;;
    deadline) echo "stopped at the deadline (${deadline}s); " ;;
  esac
}
verdict() { # the result of a step whose command failed: cut by the deadline, it was not reached
  if [ "$cut" = deadline ]; then echo "not reached"; else echo FAIL; fi
}
build_error='error:|FAILED:|Error [0-9]|CMake Error|Could NOT|undefined reference|No such file' # first lines worth quoting
first_line() { grep -m1 -E "$1" "$2" 2>/dev/null | sed 's/^[0-9]*: //' | cut -c1-200; }

# ---- the plan ------------------------------------------------------------------------------------
if [ "$no_build" = 1 ]; then plan build; else plan deps; plan configure; plan build; fi
if [ "$build_only" = 0 ]; then
  plan gpu
  for step in "${checks[@]}"; do wanted "$step" && plan "$step"; done
fi
write_summary

# ---- the build -----------------------------------------------------------------------------------
do_deps() {
  step_start deps
  local deps="$repo/.deps" root="$build_abs/deps-root" prebuilt="$build_abs/deps-gtest-prebuilt"
  if ! ls "$deps"/*.deb >/dev/null 2>&1; then
    step_end FAIL "no .deps/*.deb: run scripts/fetch_gpu_deps.sh on the Debian machine and carry .deps"
    stop_all "the dependencies are missing"
  fi
  rm -rf "$root" "$prebuilt"
  mkdir -p "$root" "$prebuilt"
  local deb into how=dpkg
  dpkg --version >/dev/null 2>&1 || how="ar + tar" # (the GPU image is Ubuntu: it has dpkg)
  for deb in "$deps"/*.deb; do
    # libgtest-dev's headers and archives apart: only a fallback, never on the include path
    into=$root
    [[ "$(basename "$deb")" == libgtest-dev_* ]] && into=$prebuilt
    if [ "$how" = dpkg ]; then
      dpkg -x "$deb" "$into"
    else # a .deb is an ar archive holding data.tar.{xz,zst,gz}
      local tmp
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$deb" && tar -xf data.tar.* -C "$into")
      rm -rf "$tmp"
    fi || { step_end FAIL "could not unpack $(basename "$deb") ($how)"; stop_all "the dependencies could not be unpacked"; }
  done
  # what the build needs, and which package brings it (fetch_gpu_deps.sh's list)
  local multiarch missing=()
  multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  cjson_include="$root/usr/include"
  cjson_library="$root/usr/lib/$multiarch/libcjson.so"
  pcre2_include="$root/usr/include"
  pcre2_library="$root/usr/lib/$multiarch/libpcre2-8.a"
  [ -f "$cjson_include/cjson/cJSON.h" ] || missing+=("libcjson-dev (cjson/cJSON.h)")
  # the link libcjson.so (libcjson-dev) and the library it points to (libcjson1)
  [ -e "$cjson_library" ] || missing+=("libcjson1 or libcjson-dev (libcjson.so -> libcjson.so.1)")
  [ -f "$pcre2_include/pcre2.h" ] && [ -f "$pcre2_library" ] ||
    missing+=("libpcre2-dev (pcre2.h, libpcre2-8.a)")
  [ -f "$root/usr/src/googletest/CMakeLists.txt" ] ||
    [ -f "$prebuilt/usr/lib/$multiarch/cmake/GTest/GTestConfig.cmake" ] ||
    missing+=("googletest or libgtest-dev (GoogleTest's source or its prebuilt archives)")
  if [ ${#missing[@]} -gt 0 ]; then
    step_end FAIL ".deps lacks $(printf '%s; ' "${missing[@]}")run scripts/fetch_gpu_deps.sh and carry .deps"
    stop_all "the dependencies are missing"
  fi

  # GoogleTest from its source with this machine's compiler; else Debian's prebuilt archives
  gtest_prefix="$build_abs/gtest"
  local gtest_how="GoogleTest built from source"
  if [ ! -f "$gtest_prefix/lib/cmake/GTest/GTestConfig.cmake" ] &&
     [ ! -f "$gtest_prefix/lib64/cmake/GTest/GTestConfig.cmake" ]; then
    rm -rf "$build/gtest-build"
    run "$logs/gtest.log" 900 bash -c '
      cmake -S "$1/usr/src/googletest" -B "$2" ${3:+-G "$3"} -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_INSTALL_PREFIX="$4" &&
      cmake --build "$2" -j "$5" && cmake --install "$2"' _ \
      "$root" "$build/gtest-build" "$generator" "$gtest_prefix" "$jobs"
    if [ $rc -ne 0 ]; then
      gtest_prefix="$prebuilt/usr"
      gtest_how="GoogleTest: Debian's prebuilt archives (the source build failed: $logs/gtest.log)"
    fi
  else
    gtest_how="GoogleTest built from source earlier"
  fi
  step_end ok "$(find "$deps" -name '*.deb' | wc -l) .debs unpacked ($how); $gtest_how"
}

do_configure() {
  step_start configure
  local cmake_args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCINFER_CUDA=ON
    -DCMAKE_CUDA_ARCHITECTURES="$arch"
    -DCJSON_INCLUDE_DIR="$cjson_include" -DCJSON_LIBRARY="$cjson_library"
    -DPCRE2_INCLUDE_DIR="$pcre2_include" -DPCRE2_LIBRARY="$pcre2_library"
    # GoogleTest first; then the unpacked .debs, where find_path/find_library look for anything else
    "-DCMAKE_PREFIX_PATH=$gtest_prefix;$build_abs/deps-root/usr")
  [ -z "$generator" ] || cmake_args+=(-G "$generator")
  run "$logs/configure.log" 600 cmake "${cmake_args[@]}"
  if [ $rc -ne 0 ]; then
    tail -n 30 "$logs/configure.log"
    # CMake's message is on the lines after "CMake Error at FILE:LINE"
    step_end "$(verdict)" "$(cut_note 600)$(grep -m1 -A6 -E "$build_error" "$logs/configure.log" | tr -s ' \n' ' ' | cut -c1-300) (configure.log)"
    stop_all "configure failed"
  fi
  grep -E "^(CJSON|PCRE2)_(INCLUDE_DIR|LIBRARY)|^GTest_DIR|^CMAKE_GENERATOR:" "$build/CMakeCache.txt" \
    | tee "$logs/found.log"
  step_end ok "$(grep -o 'CUDA code enabled.*' "$logs/configure.log" | head -n 1); $(grep '^CMAKE_GENERATOR:' "$build/CMakeCache.txt" | cut -d= -f2)"
}

do_build() {
  step_start build
  local targets=("${gpu_targets[@]}") nccl_note="no NCCL (configure.log)"
  if grep -q 'NCCL communicator enabled' "$logs/configure.log" 2>/dev/null; then
    targets+=("${nccl_targets[@]}")
    nccl_note="NCCL: ${nccl_targets[*]}"
  fi
  run "$logs/build.log" 3000 cmake --build "$build" -j "$jobs" --target "${targets[@]}"
  if [ $rc -ne 0 ]; then
    grep -E "$build_error" "$logs/build.log" | head -n 30
    step_end "$(verdict)" "$(cut_note 3000)$(first_line "$build_error" "$logs/build.log") (build.log)"
    stop_all "the build failed"
  fi
  # the binaries load here with what is carried: no library "not found", PCRE2 inside them
  local bin missing_libs="" where_cjson bins=("$cli" "$build/tests/test_cuda_ops"
    "$build/tests/test_cuda_model" "$build/bench_attention" "$build/bench_matmul")
  [ ${#targets[@]} -gt ${#gpu_targets[@]} ] && bins+=("$build/tests/test_cuda_comm" "$build/bench_comm")
  for bin in "${bins[@]}"; do
    [ -x "$bin" ] || { missing_libs+="$bin was not built; "; continue; }
    ldd "$bin" >"$logs/ldd_$(basename "$bin").log" 2>&1
    grep -q "not found" "$logs/ldd_$(basename "$bin").log" &&
      missing_libs+="$(basename "$bin"): $(grep "not found" "$logs/ldd_$(basename "$bin").log" | tr -s ' \t' ' ' | tr '\n' ';') "
  done
  where_cjson=$(grep -o 'libcjson[^ ]* => [^ ]*' "$logs/ldd_cinfer.log" 2>/dev/null | head -n 1)
  run "$logs/smoke.log" 60 "$cli" inspect --model tests/fixtures/llama_mha
  if [ -n "$missing_libs" ]; then
    step_end FAIL "$missing_libs"
    stop_all "the binaries do not load"
  elif [ $rc -ne 0 ]; then
    step_end FAIL "cinfer inspect exits $rc: $(tail -n 1 "$logs/smoke.log")"
    stop_all "cinfer does not run"
  fi
  step_end ok "$(grep -c 'warning' "$logs/build.log") warning line(s); ${where_cjson:-no libcjson?}; PCRE2 static ($(grep -c pcre2 "$logs/ldd_cinfer.log") .so); $nccl_note"
}

generator=""
if [ -f "$build/CMakeCache.txt" ]; then
  :  # the generator the build folder was made with
elif command -v ninja >/dev/null; then
  generator=Ninja
fi
built_ok() { [ -x "$cli" ] && [ -x "$build/tests/test_cuda_ops" ] && [ -x "$build/tests/test_cuda_model" ]; }
if [ "$no_build" = 1 ] && built_ok; then
  step_start build
  step_end ok "reused $build (--no-build)"
else
  if [ "$no_build" = 1 ]; then
    # a fresh machine: the build of an earlier call went with the last one; build first
    steps=(deps configure "${steps[@]}")
    result[deps]="not reached" result[configure]="not reached"
    detail[deps]="" detail[configure]="" took[deps]="" took[configure]=""
    echo "gpu_check: --no-build, but $build holds no build (a fresh machine?): building first"
  fi
  do_deps
  do_configure
  do_build
fi
[ "$build_only" = 1 ] && finish

# ---- the GPU -------------------------------------------------------------------------------------
no_gpu=""
step_start gpu
run "$logs/gpu.log" 60 bash -c 'nvidia-smi -L &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv'
smi=$rc
cat "$logs/gpu.log"
run "$logs/inspect.log" 60 "$cli" inspect --model tests/fixtures/llama_mha
grep -E "^GPU" "$logs/inspect.log"
gpu_line=$(grep -m1 -E "^GPU [0-9]" "$logs/inspect.log")
if [ -n "$gpu_line" ]; then
  step_end ok "$(echo "$gpu_line" | tr -s ' '); driver $(grep -m1 -oE ', [0-9]+\.[0-9.]+,' "$logs/gpu.log" | tr -d ', ')"
else
  no_gpu="no GPU: $(grep -m1 -E '^GPU' "$logs/inspect.log" | tr -s ' ')$([ $smi -ne 0 ] && echo "; nvidia-smi: $(head -n 1 "$logs/gpu.log" | sed 's/^bash: line [0-9]*: //')")"
  step_end "cannot run here" "$no_gpu"
  if [ "${GPU_CHECK_FORCE:-0}" != 1 ]; then
    for step in "${steps[@]}"; do
      [ "${result[$step]}" = "not reached" ] && [ "$step" != cpu-tests ] &&
        result[$step]="cannot run here" detail[$step]="no GPU (step gpu)"
    done
  fi
fi
# runs check $1 now?: asked, the GPU there (or forced), and time left
go() {
  [[ " ${steps[*]} " == *" $1 "* ]] || return 1
  [ "${result[$1]}" = "not reached" ] || return 1 # cannot run here
  if ! time_left 20; then
    detail[$1]="not started: the deadline (${deadline}s) was near"
    write_summary
    return 1
  fi
}

# ---- the CUDA suites -------------------------------------------------------------------------------
# Each suite in one process: ctest would start one process per test (about 870 of them), each with
# its own CUDA context and cuBLAS handle, which takes minutes. A suite that fails or crashes is run
# again under ctest, one process per test, so that a crash or a sticky CUDA error (which fails every
# later test in its process) shows which tests really fail.
gtest_suite() { # name [step]: one suite, in one process; appends its line to details (under step,
  # default gpu-tests), sets suite_note
  local log="$logs/$1.log" n_run n_passed n_skipped n_failed first assertion
  run "$log" 600 bash -c 'cd "$1" && OMP_WAIT_POLICY=PASSIVE exec "$2" --gtest_also_run_disabled_tests' \
    _ "$build_abs/tests" "$build_abs/tests/$1"
  n_run=$(grep -o '^\[==========\] [0-9]* tests\? from .* ran' "$log" | awk '{print $2}')
  n_passed=$(grep -o '^\[  PASSED  \] [0-9]*' "$log" | awk '{print $4}')
  n_skipped=$(grep -o '^\[  SKIPPED \] [0-9]* test' "$log" | awk '{print $4}')
  n_failed=$(grep -o '^\[  FAILED  \] [0-9]* test' "$log" | awk '{print $4}')
  first=$(grep -m1 -E '^\[  FAILED  \] .*\([0-9]+ ms\)$' "$log" | sed -E 's/^\[  FAILED  \] //; s/ \([0-9]+ ms\)$//')
  assertion=$(grep -m1 -A2 -E ': Failure$' "$log" | tr -s ' \n' ' ' | cut -c1-250)
  suite_skipped=$((suite_skipped + ${n_skipped:-0}))
  if [ $rc -eq 0 ] && [ -n "$n_run" ]; then
    suite_note="$1: ${n_passed:-0} passed, ${n_skipped:-0} skipped"
  elif [ -n "$cut" ]; then
    suite_note="$1: $(cut_note 600)last test started: $(grep '^\[ RUN      \]' "$log" | tail -n 1 | sed 's/^\[ RUN      \] //')"
    suite_failed=1
  elif [ -z "$n_run" ]; then # no closing line: it crashed
    suite_note="$1: crashed (exit $rc) in $(grep '^\[ RUN      \]' "$log" | tail -n 1 | sed 's/^\[ RUN      \] //'): $(tail -n 1 "$log")"
    suite_failed=1
  else
    suite_note="$1: ${n_failed:-?} of $n_run failed, first $first: $assertion"
    suite_failed=1
  fi
  details+=("${2:-gpu-tests} $suite_note")
  write_summary
}
if go gpu-tests; then
  step_start gpu-tests
  suite_failed=0 suite_skipped=0 notes=()
  for suite in test_cuda_ops test_cuda_model test_cuda_engine; do
    gtest_suite "$suite"
    notes+=("$suite_note")
  done
  # the figures the tests print ("[cinfer] ... logits max ...")
  grep -h "\[cinfer\]" "$logs/test_cuda_ops.log" "$logs/test_cuda_model.log" "$logs/test_cuda_engine.log" | sort -u >"$logs/measured.log"
  if [ $suite_failed = 0 ] && [ $suite_skipped -le 3 ]; then
    # three tests skip on purpose when a GPU is present (they check the no-GPU messages)
    step_end ok "$(printf '%s; ' "${notes[@]}")($suite_skipped skipped, 3 expected)"
  elif [ $suite_failed = 0 ]; then
    step_end FAIL "$suite_skipped tests skipped, 3 expected: $(grep -h -m1 -A1 'Skipped$' "$logs/test_cuda_ops.log" "$logs/test_cuda_model.log" | grep -v Skipped | head -n 1)"
  elif time_left 120; then
    run "$logs/ctest_cuda.log" 900 ctest --test-dir "$build" -R '^cuda\.' -j "$par" --timeout 120 --output-on-failure
    isolated=$(grep -E "tests passed|tests failed" "$logs/ctest_cuda.log" | tail -n 1)
    first_failed=$(first_line '\*\*\*(Failed|Exception|Timeout)|Not Run' "$logs/ctest_cuda.log" | sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: //; s/ \.{3,}.*//')
    step_end FAIL "$(printf '%s; ' "${notes[@]}")one process per test (ctest): ${isolated:-$(cut_note 900)}${first_failed:+, first $first_failed}"
  else
    step_end FAIL "$(printf '%s; ' "${notes[@]}")(no time left to isolate them under ctest)"
  fi
fi

# ---- cinfer compare on every fixture and the bundled model ----------------------------------------
# $par runs at a time: each is mostly the CPU reference and a CUDA context, the GPU is idle.
# shellcheck disable=SC2317 # run by xargs, through export -f
compare_one() { # model dtype attn: one run, its log ending with "exit N"
  local log
  log="$CI_LOGS/compare_$(basename "$1")_$2_$3.log"
  timeout -k 5 120 "$CI_CLI" compare --model "$1" --dtype "$2" --attn "$3" --tokens "$CI_TOKENS" \
    --threads "$CI_THREADS" </dev/null >"$log.tmp" 2>&1
  echo "exit $?" >>"$log.tmp"
  mv -f "$log.tmp" "$log"
}
if go compare; then
  step_start compare
  models=()
  for fixture in tests/fixtures/*/ models/diffllama-tiny/; do
    [ -f "$fixture/config.json" ] && models+=("${fixture%/}")
  done
  for model in "${models[@]}"; do
    for dtype in f32 bf16 fp16; do
      for attn in eager sdpa flash; do echo "$model $dtype $attn"; done
    done
  done >"$logs/compare_runs.txt"
  n_all=$(wc -l <"$logs/compare_runs.txt")
  rm -f "$logs"/compare_*_*.log "$logs"/compare_*_*.log.tmp
  export -f compare_one
  export CI_LOGS="$logs" CI_CLI="$cli" CI_TOKENS="1 15 7 42 9 3 27 11 100 64 5 77"
  export CI_THREADS=$(( $(nproc) / par > 0 ? $(nproc) / par : 1 ))
  run "$logs/compare_xargs.log" 1200 xargs -r -a "$logs/compare_runs.txt" -P "$par" -L 1 \
    bash -c 'compare_one "$@"' _
  n=0 n_ok=0 first_fail=""
  while read -r model dtype attn; do
    name=$(basename "$model")
    log="$logs/compare_${name}_${dtype}_${attn}.log"
    [ -f "$log" ] || continue # not run: the deadline
    n=$((n + 1))
    if [ "$(tail -n 1 "$log")" = "exit 0" ]; then
      n_ok=$((n_ok + 1))
      logits=$(grep "^logits" "$log" | awk '{print "max " $2 ", rel L2 " $3}')
      worst=$(grep -E "^(embedding|layer|final norm)" "$log" | awk '{print $(NF-1)}' | sort -g | tail -n 1)
      top1=$(grep "^top-1" "$log" | awk '{print $3 "/" $5}')
      details+=("compare $name $dtype $attn: ok: logits $logits; worst hidden rel L2 ${worst:-?}; top-1 ${top1:-?}")
    else
      why=$(first_line ' NO( |$)' "$log" | tr -s ' ')
      [ "$(tail -n 1 "$log")" = "exit 124" ] && why="timed out after 120s (a hang?)"
      [ -n "$why" ] || why=$(tail -n 2 "$log" | head -n 1)
      why="$why$(grep -m1 'outside the' "$log" | sed 's/^cinfer: compare: /; /')"
      details+=("compare $name $dtype $attn: FAIL: $why")
      [ -n "$first_fail" ] || first_fail="$name $dtype $attn: $why"
    fi
  done <"$logs/compare_runs.txt"
  if [ -n "$first_fail" ]; then
    step_end FAIL "$((n - n_ok)) of $n runs failed; first: $first_fail"
  elif [ "$n" -lt "$n_all" ]; then
    step_end "not reached" "$n of $n_all runs done, all ok; $(cut_note 1200)"
  else
    step_end ok "$n_ok of $n_all runs within tolerance (${#models[@]} models x f32/bf16/fp16 x eager/sdpa/flash; each in details)"
  fi
fi

# ---- decode speed: a fixture, and an 8B shape with random weights ---------------------------------
bench_run() { # label model backend dtype n_new: timed generation through `cinfer run`
  local log="$logs/bench_${1// /_}.log"
  run "$log" 300 "$cli" run --model "$2" --backend "$3" --dtype "$4" --tokens "1 15 7 42 9 3 27 11 100 64" \
    --max-new-tokens "$5" --ctx-size $(($5 + 16)) --ignore-eos
  if [ $rc -eq 0 ]; then
    details+=("bench $1: ok: $(grep -o 'prompt:.*' "$log" | head -n 1)")
  else
    details+=("bench $1: FAIL: $(cut_note 300)$(tail -n 1 "$log")")
    [ -n "$bench_fail" ] || bench_fail="$1: $(cut_note 300)$(tail -n 1 "$log")"
  fi
  write_summary
}
if go bench; then
  step_start bench
  bench_fail=""
  bench_run "llama_gqa_llama3 cpu f32" tests/fixtures/llama_gqa_llama3 cpu f32 200
  for dtype in f32 bf16 fp16; do
    time_left 30 && bench_run "llama_gqa_llama3 cuda $dtype" tests/fixtures/llama_gqa_llama3 cuda "$dtype" 200
  done
  # an 8B shape with no checkpoint: random weights drawn in device memory, never on the host, so
  # the host's peak RSS stays far below the 16 GB of weights
  log="$logs/bench_random_llama3-8b.log"
  timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -f "host peak RSS %M KiB" -o "$logs/rss_random_llama3-8b.txt")
  run "$log" 300 ${timer[@]+"${timer[@]}"} "$cli" bench --config bench/shapes/llama3-8b.json --random-weights \
    --backend cuda --dtype bf16 -p 16 -n 4 -r 1 --no-ceilings
  tg=$(grep -E '\| tg4 \|' "$log" | awk -F'|' '{printf "tg4 %s t/s", $12}')
  rss=$(cat "$logs/rss_random_llama3-8b.txt" 2>/dev/null || echo 'RSS not measured (no /usr/bin/time)')
  if [ $rc -eq 0 ]; then
    details+=("bench llama3-8b random cuda bf16: ok: $tg; $rss")
  else
    bench_fail=${bench_fail:-"llama3-8b random cuda bf16: $(cut_note 300)$(tail -n 1 "$log")"}
  fi
  if [ -n "$bench_fail" ]; then step_end FAIL "first: $bench_fail"
  else step_end ok "llama_gqa_llama3 and llama3-8b (random, bf16: $tg; $rss); rows in details"; fi
fi

# ---- the serving bench: continuous batching on an 8B shape ---------------------------------------
# One request at a time (a few requests: each decodes alone) and 64 in flight (two waves of 64):
# the issue's target is >= 10x the single-request output tokens/s at 64 in flight.
if go serve; then
  step_start serve
  serve_fail="" rates=()
  for cap in 1 64; do
    n=$([ $cap = 1 ] && echo 4 || echo 128)
    log="$logs/serve_llama3-8b_$cap.log"
    run "$log" 300 "$cli" bench --config bench/shapes/llama3-8b.json --random-weights --backend cuda \
      --dtype bf16 --num-prompts "$n" --input-len 256 --output-len 64 --max-seqs "$cap" --output csv
    if [ $rc -eq 0 ]; then
      rates+=("$cap in flight: $(tail -n 1 "$log" | cut -d, -f1-20)")
    else
      serve_fail=${serve_fail:-"max-seqs $cap: $(cut_note 300)$(tail -n 1 "$log")"}
    fi
    details+=("serve llama3-8b bf16 max-seqs $cap: $([ $rc -eq 0 ] && echo ok || echo FAIL): $(tail -n 1 "$log")")
    write_summary
  done
  if [ -n "$serve_fail" ]; then step_end FAIL "$serve_fail"
  else step_end ok "csv rows in details and logs/serve_*.log (header: first line of each)"; fi
fi

# ---- tensor parallelism on the GPU: the collectives, the launcher, the tokens -------------------
# A device session has one GPU, and NCCL runs one rank per GPU unless NCCL_MULTI_RANK_GPU_ENABLE=1
# (NCCL >= 2.30, experimental) lets ranks share it: every piece but test_cuda_comm runs with it set.
# With it, cinfer's launcher puts every rank on GPU 0 (--device) whatever the number of GPUs;
# bench_comm only where the GPUs are fewer than its ranks. One line of details per piece;
# a piece that needs what is not there (NCCL in the build, NCCL >= 2.30 for a shared GPU) cannot
# run here and fails nothing. Two ranks on ONE GPU measure what the collectives and the second
# process cost, not a speed-up.
tp_count() { # result piece why: the step's tally
  case "$1" in
    ok) tp_ok=$((tp_ok + 1)) ;;
    FAIL) [ -n "$tp_fail" ] || tp_fail="$2: $3" ;;
    "cannot run here") [ -n "$tp_cannot" ] || tp_cannot="$2: $3" ;;
    *) tp_stopped=1 ;;
  esac
}
tp_piece() { # result piece why: one line of details, and the tally
  details+=("tp $2: $1${3:+: $3}")
  tp_count "$@"
  write_summary
}
if go tp; then
  step_start tp
  tp_ok=0 tp_fail="" tp_cannot="" tp_stopped=0
  run_rc=() run_cut=() run_verdict=() bench_rc=() bench_cut=() bench_verdict=() tg_rate=() # by tp
  tp_blocker="" nccl_version="" # why ranks sharing GPU 0 cannot run, as bench_comm found
  n_gpus=$(grep -c '^GPU [0-9]' "$logs/gpu.log" 2>/dev/null)
  tp_where=$([ "${n_gpus:-0}" -ge 2 ] && echo "on GPUs 0 and 1" || echo "both on ONE GPU") # bench_comm's

  # 1. the suite: NCCL's collectives and a sharded model, one GPU per rank (skips below 2 GPUs)
  if [ ! -x "$build/tests/test_cuda_comm" ]; then
    tp_piece "cannot run here" test_cuda_comm "no tests/test_cuda_comm in $build (CMake found no NCCL?)"
  elif time_left 60; then
    suite_failed=0 suite_skipped=0
    gtest_suite test_cuda_comm tp
    if [ $suite_failed = 1 ]; then tp_count "$(verdict)" test_cuda_comm "$suite_note"
    elif [ $suite_skipped -gt 0 ]; then # the test's own reason: one rank per GPU, 2 needed
      tp_count "cannot run here" test_cuda_comm "$suite_skipped skipped: $(grep -h -m1 -A1 'Skipped$' "$logs/test_cuda_comm.log" | grep -v Skipped | head -n 1)"
    else tp_count ok test_cuda_comm ""; fi
  else
    tp_piece "not reached" test_cuda_comm "the deadline (${deadline}s) was near"
  fi

  # 2. the all-reduce per decode message size, 2 ranks (threads of bench_comm)
  if [ ! -x "$build/bench_comm" ]; then
    tp_blocker="no bench_comm in $build (CMake found no NCCL?): no NCCL communicator to run"
    tp_piece "cannot run here" "bench_comm 2 ranks" "$tp_blocker"
  elif time_left 60; then
    log="$logs/bench_comm.log"
    run "$logs/bench_comm.md" 180 bash -c 'NCCL_MULTI_RANK_GPU_ENABLE=1 exec "$1" --ranks 2 \
      --timeout 60 --output md 2>"$2"' _ "$build/bench_comm" "$log"
    nccl_version=$(grep -m1 '^bench_comm: NCCL' "$log" | sed 's/^bench_comm: //')
    if [ $rc -eq 0 ]; then
      cat "$logs/bench_comm.md"
      tp_piece ok "bench_comm 2 ranks $tp_where" "${nccl_version:-NCCL ?}; floats: median/p90 µs, busbw GB/s: $(awk -F'|' '/^\| [0-9]/ {for (i = 2; i <= 8; i++) gsub(/^ +| +$/, "", $i); printf "%s: %s/%s, %s; ", $2, $5, $6, $8}' "$logs/bench_comm.md")table in bench_comm.md (logs)"
    elif [ $rc -eq 77 ]; then # its "cannot run here": no device, or NCCL < 2.30 for a shared GPU
      tp_blocker="${nccl_version:+$nccl_version: }$(grep -m1 -E 'cannot run here|no CUDA device' "$log" | sed 's/^bench_comm: //')"
      tp_piece "cannot run here" "bench_comm 2 ranks" "$tp_blocker"
    else
      tp_piece "$(verdict)" "bench_comm 2 ranks $tp_where" "exit $rc: $(cut_note 180)${nccl_version:+$nccl_version; }$(grep -m1 WRONG "$logs/bench_comm.md" || tail -n 1 "$log")"
    fi
  else
    tp_piece "not reached" "bench_comm 2 ranks" "the deadline (${deadline}s) was near"
  fi

  # with two GPUs bench_comm ran one rank on each; the launcher's ranks share GPU 0 all the same
  if [ -z "$tp_blocker" ] && [[ "$nccl_version" =~ ^NCCL\ ([0-9]+)\.([0-9]+)\. ]] &&
     [ $((BASH_REMATCH[1] * 100 + BASH_REMATCH[2])) -lt 230 ]; then
    tp_blocker="$nccl_version: two ranks on GPU 0 need NCCL >= 2.30"
  fi

  # 3. tp = 2 end to end through the launcher (rank 0 and one worker process) against tp = 1: the
  # same greedy ids. Each run takes seconds; one that hangs (NCCL's ranks sharing the GPU) is cut
  # after 60 s, and no later tp 2 run is started: each would cost its whole cap.
  tp_hung=""
  for model in tests/fixtures/llama_gqa_llama3 models/diffllama-tiny; do
    name=$(basename "$model")
    if [ -n "$tp_blocker" ]; then tp_piece "cannot run here" "run $name tp 2 vs 1" "$tp_blocker"; continue; fi
    if [ -n "$tp_hung" ]; then tp_piece "not reached" "run $name tp 2 vs 1" "not started: $tp_hung"; continue; fi
    if ! time_left 60; then tp_piece "not reached" "run $name tp 2 vs 1" "the deadline (${deadline}s) was near"; continue; fi
    for tp in 1 2; do
      run "$logs/tp_run_${name}_tp$tp.out" 60 bash -c 'NCCL_MULTI_RANK_GPU_ENABLE=1 exec "$1" run \
        --model "$2" --backend cuda --dtype f32 --tokens "1 15 7 42 9 3 27 11" --max-new-tokens 32 \
        --ignore-eos --tp "$3" 2>"$4"' _ "$cli" "$model" "$tp" "$logs/tp_run_${name}_tp$tp.log"
      run_rc[tp]=$rc run_cut[tp]=$(cut_note 60) run_verdict[tp]=$(verdict)
    done
    [ "$cut" = cap ] && tp_hung="tp 2 on $name did not finish within 60 s"
    out1="$logs/tp_run_${name}_tp1.out" out2="$logs/tp_run_${name}_tp2.out"
    if [ "${run_rc[1]}" -ne 0 ]; then
      tp_piece "${run_verdict[1]}" "run $name tp 2 vs 1" "tp 1 exits ${run_rc[1]}: ${run_cut[1]}$(tail -n 1 "$logs/tp_run_${name}_tp1.log")"
    elif [ "${run_rc[2]}" -ne 0 ]; then
      tp_piece "${run_verdict[2]}" "run $name tp 2 vs 1" "tp 2 (both ranks on GPU 0) exits ${run_rc[2]}: ${run_cut[2]}$(tail -n 1 "$logs/tp_run_${name}_tp2.log")"
    elif [ ! -s "$out1" ]; then
      tp_piece FAIL "run $name tp 2 vs 1" "tp 1 printed no ids"
    elif cmp -s "$out1" "$out2"; then
      tp_piece ok "run $name tp 2 vs 1" "the same $(wc -w <"$out1") ids, f32, tp 2 with both ranks on GPU 0"
    else
      tp_piece FAIL "run $name tp 2 vs 1" "the ids differ: tp 1: $(tr '\n' ' ' <"$out1"); tp 2: $(tr '\n' ' ' <"$out2")"
    fi
  done

  # 4. decode tokens/s at tp 1 and tp 2 (cinfer bench's tg128 row)
  if [ -n "$tp_blocker" ]; then
    tp_piece "cannot run here" "bench diffllama-tiny tp 1 vs 2" "$tp_blocker"
  elif [ -n "$tp_hung" ]; then
    tp_piece "not reached" "bench diffllama-tiny tp 1 vs 2" "not started: $tp_hung"
  elif ! time_left 90; then
    tp_piece "not reached" "bench diffllama-tiny tp 1 vs 2" "the deadline (${deadline}s) was near"
  else
    for tp in 1 2; do
      tp_args=()
      [ $tp = 2 ] && tp_args=(--tp 2)
      log="$logs/tp_bench_diffllama-tiny_tp$tp.log"
      run "$log" 120 env NCCL_MULTI_RANK_GPU_ENABLE=1 "$cli" bench --model models/diffllama-tiny \
        --backend cuda --dtype bf16 -p 16 -n 128 -r 3 --no-ceilings ${tp_args[@]+"${tp_args[@]}"}
      tg=$(grep -E '\| tg128 \|' "$log" | head -n 1 | awk -F'|' '{gsub(/^ +| +$/, "", $12); print $12}')
      bench_rc[tp]=$rc bench_cut[tp]=$(cut_note 120) bench_verdict[tp]=$(verdict) tg_rate[tp]=$tg
    done
    if [ "${bench_rc[1]}" -ne 0 ] || [ -z "${tg_rate[1]}" ]; then
      tp_piece "$([ "${bench_rc[1]}" -ne 0 ] && echo "${bench_verdict[1]}" || echo FAIL)" "bench diffllama-tiny tp 1 vs 2" "tp 1 exits ${bench_rc[1]}: ${bench_cut[1]}$(tail -n 1 "$logs/tp_bench_diffllama-tiny_tp1.log")"
    elif [ "${bench_rc[2]}" -ne 0 ] || [ -z "${tg_rate[2]}" ]; then
      tp_piece "$([ "${bench_rc[2]}" -ne 0 ] && echo "${bench_verdict[2]}" || echo FAIL)" "bench diffllama-tiny tp 1 vs 2" "tp 2 (both ranks on GPU 0) exits ${bench_rc[2]}: ${bench_cut[2]}$(tail -n 1 "$logs/tp_bench_diffllama-tiny_tp2.log")"
    else
      tp_piece ok "bench diffllama-tiny tp 1 vs 2" "bf16 tg128: tp 1 ${tg_rate[1]} t/s, tp 2 ${tg_rate[2]} t/s ($(awk -v a="${tg_rate[2]%% *}" -v b="${tg_rate[1]%% *}" 'BEGIN {printf "%.2fx", a / b}') of tp 1), both ranks on GPU 0: what the collectives and the second process cost, not a speed-up"
    fi
  fi

  if [ -n "$tp_fail" ]; then step_end FAIL "first: $tp_fail"
  elif [ "$tp_stopped" = 1 ]; then step_end "not reached" "$tp_ok piece(s) ok, then the deadline; each in details"
  elif [ "$tp_ok" = 0 ]; then step_end "cannot run here" "${tp_blocker:-$tp_cannot}"
  else step_end ok "$tp_ok piece(s) ok$([ -n "$tp_cannot" ] && echo "; cannot run here: $tp_cannot"); each in details"; fi
fi

# ---- the HTTP server under an existing client -----------------------------------------------------
# The image has no libmicrohttpd (docs/SERVING.md, "Known limits"): the build then leaves `serve`
# out, and this step says so rather than fail.
if go serve-http; then
  step_start serve-http
  if ! "$cli" --help 2>/dev/null | grep -q '^  serve'; then
    step_end "cannot run here" "this build has no 'serve' (libmicrohttpd not found by CMake)"
  elif [ ! -x .venv-bench/bin/guidellm ]; then
    step_end "cannot run here" "no GuideLLM in .venv-bench (scripts/bench_serving.sh makes it where PyPI is)"
  else
    log="$logs/serve_http.log"
    run "$log" 400 scripts/bench_serving.sh --server cinfer --cinfer "$cli" \
      --cinfer-args "--backend cuda --dtype bf16" --concurrency 1,8,32 --requests 64 \
      --out "$logs/serve_http"
    if [ $rc -eq 0 ]; then step_end ok "table in logs/serve_http/table.md"
    else step_end FAIL "$(cut_note 300)$(tail -n 1 "$log")"; fi
  fi
fi

# ---- the issue's figures: real shapes with random weights, beside transformers --------------------
# Llama-3-8B and DiffLlama-8B first (tg128 against the bandwidth ceiling, pp512 against the GEMM
# ceiling, decode against transformers' sdpa), then the small shapes.
first_number() { grep -E "\| $1 \|" "$2" | head -n 1 | awk -F'|' -v col="$3" '{split($col, a, " "); print a[1]}'; }
if go figures; then
  step_start figures
  fig_fail="" fig_note="" stopped=""
  for shape in llama3-8b diffllama-8b llama3.2-1b diffllama-0.3b-handcut; do
    if ! time_left 120; then stopped="the deadline (${deadline}s) stopped it before $shape"; break; fi
    log="$logs/bench_shape_$shape.log"
    run "$log" 600 "$cli" bench --config "bench/shapes/$shape.json" --random-weights --backend cuda \
      --dtype bf16 --attn "${GPU_CHECK_ATTN:-auto}" -p 512 -n 128 -r 3
    ours_rc=$rc
    details+=("cinfer $shape random cuda bf16: $([ $rc -eq 0 ] && echo ok || echo FAIL): $(grep -E '\| (pp512|tg128) \|' "$log" | awk -F'|' '{printf "%s%s t/s,%s; ", $11, $12, $13}')$([ $rc -eq 0 ] || echo "$(cut_note 600)$(tail -n 1 "$log")")")
    [ $ours_rc -eq 0 ] || fig_fail=${fig_fail:-"cinfer $shape: $(cut_note 600)$(tail -n 1 "$log")"}
    hf_log="$logs/bench_hf_$shape.log"
    run "$hf_log" 600 python3 scripts/bench_hf.py --config "bench/shapes/$shape.json" --device cuda \
      --dtype bfloat16 --attn sdpa -p 512 -n 128 -r 3
    details+=("transformers $shape cuda bf16 sdpa: $([ $rc -eq 0 ] && echo ok || echo FAIL): $(grep -E '\| (pp512|tg128) \|' "$hf_log" | awk -F'|' '{printf "%s%s t/s; ", $10, $11}')$([ $rc -eq 0 ] || echo "$(cut_note 600)$(tail -n 1 "$hf_log")")")
    # transformers failing is no failure of cinfer's, but it leaves no ratio
    [ $rc -eq 0 ] || fig_note="transformers failed on $shape (details)"
    ours=$(first_number tg128 "$log" 12) theirs=$(first_number tg128 "$hf_log" 11)
    if [ -n "$ours" ] && [ -n "$theirs" ]; then
      details+=("decode vs transformers $shape: tg128 $(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2fx (asked: at least 3x)", a / b}')")
    fi
    write_summary
  done
  if [ -n "$fig_fail" ]; then step_end FAIL "first: $fig_fail"
  elif [ -n "$stopped" ]; then step_end "not reached" "$stopped"
  else step_end ok "4 shapes, rows and ratios in details${fig_note:+; $fig_note}"; fi
fi

# ---- the attention kernels alone, beside torch SDPA and transformers' DiffLlama attention ---------
if go attention; then
  step_start attention
  log="$logs/bench_attention.log"
  run "$logs/bench_attention.json" 300 bash -c '"$1" --attn eager,sdpa,flash --head-dim 64,128 \
    --seq 512,4096 --variant standard,diff --mode prefill,decode --dtype bf16 -r 3 --output json 2>"$2"' \
    _ "$build/bench_attention" "$log"
  ours_rc=$rc ours_cut=$(cut_note 300) ours_verdict=$(verdict)
  torch_note=""
  if [ $ours_rc -eq 0 ]; then
    run "$logs/bench_attention_table.md" 300 bash -c 'python3 scripts/bench_attention.py --head-dim 64,128 \
      --seq 512,4096 --mode prefill,decode -r 3 --cinfer-json "$1" 2>>"$2"' _ "$logs/bench_attention.json" "$log"
    if [ $rc -eq 0 ]; then
      cat "$logs/bench_attention_table.md"
    else # torch failing is no failure of cinfer's
      torch_note="; the torch side failed: $(cut_note 300)$(tail -n 1 "$log")"
    fi
  fi
  run "$logs/check_memory.log" 120 "$build/bench_attention" --check-memory --attn eager,sdpa,flash \
    --seq 4096 --head-dim 128 --variant standard,diff
  mem_rc=$rc
  details+=("attention --check-memory: $([ $mem_rc -eq 0 ] && echo ok || echo FAIL): $(tail -n 1 "$logs/check_memory.log")")
  if [ $ours_rc -ne 0 ]; then
    step_end "$ours_verdict" "bench_attention: $ours_cut$(tail -n 1 "$log")"
  elif [ $mem_rc -ne 0 ]; then
    step_end "$(verdict)" "--check-memory: $(cut_note 120)$(tail -n 1 "$logs/check_memory.log")"
  else
    step_end ok "table in bench_attention_table.md (logs); no score matrix in global memory for sdpa, flash$torch_note"
  fi
fi

# ---- the decode GEMV alone, beside cuBLAS and a copy (Llama-3-8B projections, T = 1..8) -----------
if go matmul; then
  step_start matmul
  log="$logs/bench_matmul.log"
  run "$logs/bench_matmul.md" 300 bash -c '"$1" -T 1,2,4,8 --dtype bf16,fp16 -r 5 --output md 2>"$2"' \
    _ "$build/bench_matmul" "$log"
  rc_table=$rc cut_table=$(cut_note 300) verdict_table=$(verdict)
  run "$logs/bench_matmul_tiles.json" 300 bash -c '"$1" -T 1,8 --dtype bf16 --tiles auto,1,2,4 -r 3 \
    --output json 2>>"$2"' _ "$build/bench_matmul" "$log"
  if [ $rc_table -eq 0 ] && [ $rc -eq 0 ]; then
    cat "$logs/bench_matmul.md"
    step_end ok "table in bench_matmul.md, tile sweep in bench_matmul_tiles.json (logs)"
  else
    # 1: a row's output differs from cuBLAS (MISMATCH in the table) or a shape did not fit
    # (not reached where each run that failed was stopped by the deadline)
    matmul_result=FAIL
    if { [ $rc_table -eq 0 ] || [ "$verdict_table" = "not reached" ]; } &&
       { [ $rc -eq 0 ] || [ "$(verdict)" = "not reached" ]; }; then matmul_result="not reached"; fi
    step_end "$matmul_result" "rc $rc_table/$rc: $cut_table$(cut_note 300)$(grep -m1 MISMATCH "$logs/bench_matmul.md" || tail -n 1 "$log")"
  fi
fi

# ---- compute-sanitizer ------------------------------------------------------------------------------
find_tool() { # name: on PATH, else where CUDA images keep it
  command -v "$1" 2>/dev/null && return 0
  local f
  for f in /usr/local/cuda/bin/"$1" /usr/local/cuda/"$1"/"$1" /opt/nvidia/nsight-compute/*/"$1"; do
    [ -x "$f" ] && { echo "$f"; return 0; }
  done
  return 1
}
# the tool's own words where it refuses this machine (gVisor: "Device not supported", then error
# 999; ncu: "LibraryNotLoaded", or no permission for the counters)
refusal() { first_line 'Device not supported|not supported on this|LibraryNotLoaded|ERR_NVGPUCTRPERM|permission to access NVIDIA GPU Performance Counters|Failed to initialize the profiler|Unable to find injection|Error: No attachable' "$1"; }
if go sanitizer; then
  step_start sanitizer
  if ! sanitizer=$(find_tool compute-sanitizer); then
    step_end "cannot run here" "compute-sanitizer not found (PATH, /usr/local/cuda)"
  else
    san_fail="" refused="" stopped="" n=0
    for one in "memcheck diffllama_gqa2_llama3 bf16 flash" "memcheck llama_gqa_llama3 f32 flash" \
               "memcheck llama_yarn fp16 sdpa" "memcheck diffllama_gqa4 bf16 sdpa" \
               "memcheck llama_mha f32 eager" "racecheck diffllama_gqa4 bf16 flash" \
               "racecheck llama_gqa_llama3 fp16 flash" "racecheck diffllama_mha f32 sdpa" \
               "synccheck diffllama_gqa2_llama3 bf16 flash"; do
      read -r tool fixture dtype attn <<<"$one"
      if ! time_left 30; then stopped="the deadline (${deadline}s)"; break; fi
      log="$logs/sanitizer_${tool}_${fixture}_${dtype}_${attn}.log"
      run "$log" 300 "$sanitizer" --tool "$tool" --error-exitcode 99 "$cli" run \
        --model "tests/fixtures/$fixture" --backend cuda --dtype "$dtype" --attn "$attn" \
        --tokens "1 15 7 42 9" --max-new-tokens 6
      refused=$(refusal "$log")
      if [ -n "$refused" ]; then break; fi
      n=$((n + 1))
      errors=$(grep -o "ERROR SUMMARY: [0-9]* error" "$log" | tail -n 1)
      if [ $rc -eq 0 ]; then
        details+=("sanitizer $tool $fixture $dtype $attn: ok: $errors")
      else
        why="${errors:-rc $rc}: $(cut_note 300)$(first_line '^========= (Invalid|Race|Barrier|Uninitialized|Program hit|Error)' "$log")"
        details+=("sanitizer $tool $fixture $dtype $attn: FAIL: $why")
        san_fail=${san_fail:-"$tool $fixture $dtype $attn: $why"}
      fi
      write_summary
    done
    if [ -n "$refused" ]; then
      step_end "cannot run here" "compute-sanitizer refuses this machine: $refused"
    elif [ -n "$san_fail" ]; then
      step_end FAIL "first: $san_fail"
    elif [ -n "$stopped" ]; then
      step_end "not reached" "$n of 9 runs done (all clean) when $stopped stopped it"
    else
      step_end ok "9 runs (memcheck, racecheck, synccheck) with no error"
    fi
  fi
fi

# ---- Nsight Compute: the speed of light of one short run's first kernels -----------------------------
if go ncu; then
  step_start ncu
  if ! ncu=$(find_tool ncu); then
    step_end "cannot run here" "ncu not found (PATH, /usr/local/cuda, /opt/nvidia/nsight-compute)"
  else
    # prefill and the first decode steps of a GQA fixture in bf16 with flash attention
    run "$logs/ncu.csv" 300 "$ncu" --clock-control none --launch-count 40 --section SpeedOfLight \
      --csv --page details "$cli" run --model tests/fixtures/llama_gqa_llama3 --backend cuda \
      --dtype bf16 --attn flash --tokens "1 15 7 42 9 3 27 11" --max-new-tokens 4
    refused=$(refusal "$logs/ncu.csv")
    n_kernels=$(grep -c '"Duration"' "$logs/ncu.csv")
    if [ -n "$refused" ]; then
      step_end "cannot run here" "ncu cannot profile here: $refused"
    elif [ $rc -eq 0 ] && [ "$n_kernels" -gt 0 ]; then
      step_end ok "$n_kernels kernels profiled (ncu.csv in the logs)"
    else
      step_end FAIL "rc $rc, $n_kernels kernels: $(cut_note 300)$(first_line '==ERROR==|==WARNING==|error' "$logs/ncu.csv")"
    fi
  fi
fi

# ---- a 1.2B random DiffLlama checkpoint through run and compare ---------------------------------------
if go big; then
  step_start big
  big="$build/big"
  bench_fail=""
  if [ ! -f "$big/config.json" ]; then
    run "$logs/big.log" 600 python3 scripts/make_fixtures.py --big "$big"
  else
    rc=0
  fi
  if [ $rc -ne 0 ]; then
    step_end FAIL "scripts/make_fixtures.py --big: $(cut_note 600)$(tail -n 1 "$logs/big.log")"
  else
    for dtype in bf16 fp16 f32; do time_left 60 && bench_run "1.2B diffllama cuda $dtype" "$big" cuda "$dtype" 64; done
    run "$logs/compare_big_bf16.log" 300 "$cli" compare --model "$big" --dtype bf16 --tokens "1 15 7 42 9 3 27 11"
    cmp_rc=$rc
    cmp="$(grep '^logits' "$logs/compare_big_bf16.log" | awk '{print "logits max " $2 ", rel L2 " $3}')"
    if [ $cmp_rc -ne 0 ]; then step_end FAIL "compare bf16: $(cut_note 300)$(tail -n 1 "$logs/compare_big_bf16.log")"
    elif [ -n "$bench_fail" ]; then step_end FAIL "first: $bench_fail"
    else step_end ok "compare bf16: $cmp; runs in details"; fi
  fi
fi

# ---- every other suite, on the CPU -------------------------------------------------------------------
if [[ " ${steps[*]} " == *" cpu-tests "* ]] && [ "${result[cpu-tests]}" = "not reached" ] && time_left 60; then
  step_start cpu-tests
  run "$logs/build_all.log" 3000 cmake --build "$build" -j "$jobs"
  if [ $rc -ne 0 ]; then
    step_end "$(verdict)" "building the other targets: $(cut_note 3000)$(first_line "$build_error" "$logs/build_all.log")"
  else
    run "$logs/ctest_cpu.log" 1800 ctest --test-dir "$build" -E '^cuda\.' -j "$jobs"
    step_end "$([ $rc -eq 0 ] && echo ok || echo FAIL)" \
      "$(cut_note 1800)$(grep -E 'tests passed|tests failed' "$logs/ctest_cpu.log" | tail -n 1)$([ $rc -eq 0 ] || echo "; first: $(first_line 'Failed|Exception|Timeout' "$logs/ctest_cpu.log")")"
  fi
fi

finish
