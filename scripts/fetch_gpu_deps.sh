#!/usr/bin/env bash
# Fetches, on this (Debian 12) machine, the packages a GPU machine needs to build cinfer and its GPU
# tests but does not have, into .deps/ (git-ignored), which the device call carries along:
#
#   scripts/fetch_gpu_deps.sh                                  here, once (needs `apt-get update`)
#   scripts/gpu_check.sh --hide-system --build-only            here: the rehearsal (README, "On a GPU")
#   <device run, carry .deps> scripts/gpu_check.sh --build-only   there, then the checks
#
# The GPU machine is a bare Ubuntu-based CUDA image (nvcc, cuBLAS, NCCL, CMake, ninja, a compiler,
# Python with torch) with no package registry: every library the build needs that is not part of
# the CUDA toolkit or of the C/C++ toolchain must be in this list. gpu_check.sh --hide-system hides
# these packages (and every other -dev package but the toolchain's) from the compiler and CMake on
# this machine, so a green rehearsal proves the list is complete.
#
# How each one is carried, and why (the image is Ubuntu 22.04 or 24.04: glibc 2.35 or 2.39, older
# or newer than Debian 12's 2.36, so nothing carried may need a symbol newer than GLIBC_2.35):
# - PCRE2: libpcre2-dev alone; gpu_check.sh links its static libpcre2-8.a, so the binaries do not
#   depend on the image's libpcre2-8.so.0 (which exists there, grep links it, but in Ubuntu's
#   version). The archive calls only old libc functions (memcpy, malloc, pthread_mutex_lock, ...):
#   the check below finds none newer than GLIBC_2.14. Its runtime package libpcre2-8-0 (the .so
#   the -dev package's libpcre2-8.so link points to) is not needed, hence not carried.
# - cJSON: Debian ships no static archive, so libcjson1's .so is carried and found at run time
#   through the build tree's RPATH (CMake writes it for a library given by full path). It needs
#   GLIBC_2.14 at most (objdump -T), so it loads on any glibc since 2011.
# - GoogleTest: the source (googletest), which gpu_check.sh builds with the image's own compiler
#   (its libstdc++ may be older than Debian's); libgtest-dev's prebuilt archives are the fallback.
# fetch checks the GLIBC versions of what it fetched (below) and stops if any is too new.
#
# The coming HTTP server adds libmicrohttpd (libmicrohttpd-dev libmicrohttpd12) and libcurl
# (libcurl4-openssl-dev, for its tests): one more line in `packages`, the hide list follows. Not
# carried yet, since nothing builds with them and these two are not simple: libmicrohttpd12 needs
# glibc >= 2.34 and libgnutls30 >= 3.7.5 (Ubuntu 22.04 has 3.7.3), its .a needs GnuTLS too, and
# libcurl's .so pulls in a dozen runtime libraries. Better: a CMake option that leaves the server
# out of the GPU build (the GPU checks do not need it); see gpu_check.sh's header.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  libcjson1 libcjson-dev   # cJSON: the loaders' JSON (config.json, safetensors headers)
  libpcre2-dev             # PCRE2: the tokenizer's regexes (static libpcre2-8.a)
  libgtest-dev googletest  # GoogleTest: the GPU test suites
  # libmicrohttpd-dev libmicrohttpd12 libcurl4-openssl-dev   # the server and its tests (above)
)
glibc_max=${GLIBC_MAX:-2.35} # Ubuntu 22.04, the oldest image CUDA 13 supports

mkdir -p .deps
cd .deps
rm -f ./*.deb
# apt-get download writes into the current folder; as root it warns that it runs unsandboxed
if ! apt-get download "${packages[@]}" 2> >(grep -v "unsandboxed" >&2); then
  echo "fetch_gpu_deps: apt-get download failed (run 'apt-get update' first?)" >&2
  exit 1
fi
for p in "${packages[@]}"; do
  ls "${p}"_*.deb >/dev/null 2>&1 || { echo "fetch_gpu_deps: ${p} was not downloaded" >&2; exit 1; }
done

# ---- the GLIBC versions each carried binary needs ------------------------------------------------
# Shared objects: the versions they reference (objdump -T). Static archives: their undefined
# symbols, each looked up in this machine's libc/libm, whose default version of a symbol is the
# one a link there would bind to (a symbol glibc added after 2.35 would show such a version).
if command -v objdump >/dev/null && command -v nm >/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for deb in ./*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
  libc_versions="$tmp/libc_versions"
  for lib in /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6; do
    # "... GLIBC_2.14  memcpy" (default) vs "(GLIBC_2.2.5) memcpy" (older, hidden)
    objdump -T "$lib" 2>/dev/null | awk 'NF >= 2 && $(NF-1) ~ /^GLIBC_/ {print $NF, $(NF-1)}'
  done >"$libc_versions"
  too_new=0
  while IFS= read -r -d '' f; do
    case "$f" in
      *.a) needed=$(nm -u "$f" 2>/dev/null | awk 'NF >= 2 {print $NF}' | sort -u |
                      awk 'NR == FNR {v[$1] = $2; next} ($1 in v) {print v[$1]}' "$libc_versions" - |
                      sort -uV | tail -n 1) ;;
      *) needed=$(objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1) ;;
    esac
    needed=${needed:-none}
    printf '  %-50s needs %s\n' "${f#"$tmp/root"}" "$needed"
    if [ "$needed" != none ] &&
       [ "$(printf '%s\n%s\n' "${needed#GLIBC_}" "$glibc_max" | sort -V | tail -n 1)" != "$glibc_max" ]; then
      echo "fetch_gpu_deps: ${f#"$tmp/root"} needs $needed, newer than the image's GLIBC_$glibc_max" >&2
      too_new=1
    fi
  done < <(find "$tmp/root" -type f \( -name '*.so*' -o -name '*.a' \) -print0)
  [ "$too_new" = 0 ] || exit 1
  echo "fetch_gpu_deps: nothing carried needs more than GLIBC_$glibc_max"
else
  echo "fetch_gpu_deps: no objdump/nm (binutils): GLIBC versions not checked" >&2
fi
ls -l ./*.deb
du -sh .
