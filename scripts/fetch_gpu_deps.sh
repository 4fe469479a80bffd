#!/usr/bin/env bash
# Fetches, on this (Debian) machine, the Debian packages a GPU machine needs to build cinfer and
# its tests but does not have: cJSON (library and headers) and GoogleTest (prebuilt static
# libraries with their CMake config, and the source, which scripts/gpu_check.sh builds with the
# GPU machine's own compiler first, in case its libstdc++ is older than Debian 12's).
#
# They land in .deps/ (git-ignored), which the device call carries to the GPU machine:
#   scripts/fetch_gpu_deps.sh && <run on the GPU machine, carry .deps> scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(libcjson1 libcjson-dev libgtest-dev googletest)
mkdir -p .deps
cd .deps
rm -f ./*.deb
# apt-get download writes into the current folder; as root it warns that it runs unsandboxed
apt-get download "${packages[@]}" 2>&1 | grep -v "unsandboxed" || true
for p in "${packages[@]}"; do
  ls "${p}"_*.deb >/dev/null 2>&1 || { echo "fetch_gpu_deps: ${p} was not downloaded" >&2; exit 1; }
done
ls -l ./*.deb
