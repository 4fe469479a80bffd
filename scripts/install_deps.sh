#!/usr/bin/env bash
# Installs the Debian packages cinfer builds and tests with, when they are missing:
# a C/C++ toolchain, CMake, cJSON, GoogleTest, PCRE2, libmicrohttpd (cinfer serve), libcurl (the
# server's tests), and clang with its libFuzzer runtime.
# The CUDA toolkit is not installed here (it is large and comes with GPU machines); the build
# compiles the CUDA code whenever nvcc is present and skips it otherwise.
set -euo pipefail

packages=(build-essential cmake pkg-config libcjson-dev libgtest-dev libpcre2-dev libmicrohttpd-dev
          libcurl4-openssl-dev python3-venv clang libclang-rt-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
