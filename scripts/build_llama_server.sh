#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU only, Release) into build-llama/, the peer that
# scripts/bench_serving.sh runs beside `cinfer serve`.
#
# Where the source comes from: PyPI serves only its own registry here, and llama.cpp itself is not
# a PyPI package, but the source distribution of its Python bindings, `llama-cpp-python`, carries
# a whole llama.cpp tree under vendor/llama.cpp (with convert_hf_to_gguf.py and gguf-py). So:
#   1. `pip download --no-binary llama-cpp-python --no-deps` into build-llama/sdist/ (~75 MB, once;
#      `--no-binary :all:` would also insist on building scikit-build-core, the sdist's build
#      backend, from source just to read the sdist's metadata, and fails without it),
#   2. unpack it into build-llama/src/,
#   3. configure with CMake with nothing that reaches the network: no prebuilt web UI (llama.cpp
#      otherwise downloads it from a model hub at build time), no npm build of it, no OpenSSL
#      (the server only listens on 127.0.0.1 here), static libraries (one self-contained
#      binary), no tests, examples or other tools,
#   4. build the llama-server target alone, -j2 (this machine has 2 cores).
# Each step is skipped when its output is already there, so after the first run this works
# offline and costs nothing. Prints the binary's path on its last line.
#
#   scripts/build_llama_server.sh [--version V] [--jobs N] [--print-src]
#
# --print-src prints the llama.cpp source folder (for convert_hf_to_gguf.py) after making sure it
# is unpacked, and builds nothing.
# Measured on the 2-core development machine: download 8 s, unpack 2 s, configure and build 18 min
# 40 s (206 steps, most of them the libraries llama-server links: ggml, llama, common, mtmd),
# beside a pip install of torch and another engineer's compile.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The version this script was written against and checked with; another one may need other CMake
# options (llama.cpp renames them now and then). Override with --version or LLAMA_CPP_PYTHON_VERSION.
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
jobs=2
print_src=0
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version=$2; shift 2 ;;
    --jobs|-j) jobs=$2; shift 2 ;;
    --print-src) print_src=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build_llama_server.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

top="$REPO_ROOT/build-llama"
sdist_dir="$top/sdist"
src_root="$top/src"
llama_src="$src_root/llama_cpp_python-$version/vendor/llama.cpp"
build_dir="$top/build-$version"
bin="$build_dir/bin/llama-server"

say() { echo "[build_llama_server] $*" >&2; }

# 1. the source distribution, once
sdist="$sdist_dir/llama_cpp_python-$version.tar.gz"
if [ ! -f "$sdist" ]; then
  mkdir -p "$sdist_dir"
  say "downloading llama-cpp-python $version (source distribution) into $sdist_dir"
  if ! python3 -m pip download --disable-pip-version-check --no-binary llama-cpp-python --no-deps \
      -d "$sdist_dir" "llama-cpp-python==$version" >&2; then
    say "error: could not download llama-cpp-python==$version from PyPI (offline? the first run needs PyPI)"
    exit 1
  fi
  [ -f "$sdist" ] || { say "error: pip did not leave $sdist"; exit 1; }
fi

# 2. unpacked, once (into a temporary name first, so an interrupted unpack is never taken as done)
if [ ! -f "$llama_src/CMakeLists.txt" ]; then
  say "unpacking $sdist"
  mkdir -p "$src_root"
  tmp="$src_root/.unpack.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  tar -xzf "$sdist" -C "$tmp"
  rm -rf "$src_root/llama_cpp_python-$version"
  mv "$tmp/llama_cpp_python-$version" "$src_root/"
  rmdir "$tmp"
  [ -f "$llama_src/CMakeLists.txt" ] || { say "error: $sdist has no vendor/llama.cpp/CMakeLists.txt"; exit 1; }
fi

if [ $print_src = 1 ]; then
  echo "$llama_src"
  exit 0
fi

# 3. and 4. configure and build; CMake and make skip what is up to date
if [ ! -x "$bin" ]; then
  say "configuring llama.cpp from $llama_src into $build_dir"
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  cmake -S "$llama_src" -B "$build_dir" ${gen[@]+"${gen[@]}"} \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_RPC=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DGGML_CCACHE=OFF \
    >"$top/configure-$version.log" 2>&1 ||
    { tail -n 30 "$top/configure-$version.log" >&2; say "error: configure failed (log: $top/configure-$version.log)"; exit 1; }
  say "building llama-server (-j$jobs; a few minutes on 2 cores; log: $top/build-$version.log)"
  cmake --build "$build_dir" --target llama-server -j "$jobs" >"$top/build-$version.log" 2>&1 ||
    { tail -n 30 "$top/build-$version.log" >&2; say "error: build failed (log: $top/build-$version.log)"; exit 1; }
  [ -x "$bin" ] || { say "error: the build left no $bin"; exit 1; }
fi
echo "$bin"
