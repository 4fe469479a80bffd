#!/usr/bin/env bash
# Runs a command with this machine's development packages out of sight of the compiler, the linker
# and CMake, so that what it builds can use only .deps/ (scripts/fetch_gpu_deps.sh), the C/C++
# toolchain and CUDA: what a bare CUDA image has. gpu_check.sh --hide-system runs itself through
# this; by hand (as root, on this Debian machine; the GPU machine never needs it):
#
#   scripts/hide_system_deps.sh [--deps DIR] [--list] -- COMMAND [ARGS...]
#
#   --deps DIR   the carried .debs (default .deps): these packages are hidden by name too
#   --list       print every hidden path (else one line with the counts)
#
# What is hidden, for COMMAND and its children only (a private mount namespace, `unshare -m`):
# - /usr/include: every header but the C/C++ toolchain's (packages libc6-dev, linux-libc-dev,
#   libcrypt-dev, libnsl-dev, libtirpc-dev, rpcsvc-proto, libstdc++-N-dev). gcc searches
#   /usr/include whatever CMake is told, so these must be gone, not merely ignored by CMake.
# - elsewhere under /usr: every file of each package carried in .deps and of every other installed
#   -dev package but the toolchain's: .so links, .a archives, pkg-config files, CMake package
#   configs, *-config programs, sources (googletest's /usr/src/googletest). So a library the build
#   starts to need but .deps lacks fails the rehearsal here, not the first run on the GPU machine.
# - what stays: runtime libraries of packages that are not carried (libpcre2-8.so.0 among them:
#   grep needs it, and the GPU image has its own), CUDA (/usr/local/cuda, /usr/local/include,
#   /usr/local/lib: not dpkg's), and the toolchain (gcc's own headers and libgomp included).
#   Packages in runtime_re below are never hidden, even when carried, since the tools this
#   command runs link them.
# How: one overlay mount over each of /usr/include, /usr/lib, /usr/share, ... whose upper layer, a
# tmpfs, holds a whiteout (a character device 0/0) per hidden path, or per directory where nothing
# in it stays. A hidden name is gone, not empty: find_path and find_library find nothing, and gcc
# says "No such file or directory". Before COMMAND runs, every file of the carried packages is
# checked to be gone, each of their headers not to be includable and each library not to be
# found by gcc; any that still is stops it here.
# Needs root (else it tries `unshare -r`), dpkg-query, util-linux's unshare and mount, overlayfs.
# shellcheck disable=SC2016 # the re-executed bash -c script takes "$0" "$@" on purpose
set -euo pipefail
export LC_ALL=C # comm and sort must agree on the order

deps=.deps
list=0
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --deps) deps=${2:?--deps needs a folder}; shift ;;
    --list) list=1 ;;
    --) shift; break ;;
    *) echo "hide_system_deps: unknown argument '$1' (usage: [--deps DIR] [--list] -- COMMAND...)" >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "hide_system_deps: no command given (usage: [--deps DIR] [--list] -- COMMAND...)" >&2; exit 2; }
die() { echo "hide_system_deps: $*" >&2; exit 1; }

if [ "${CINFER_HIDE_SYSTEM_NS:-}" != "$$" ]; then
  for tool in unshare mount mknod dpkg-query; do
    command -v "$tool" >/dev/null || die "needs $tool (this is for the Debian machine, not the GPU one)"
  done
  # a fresh mount namespace; the child's pid is the namespace's marker (it is re-executed there)
  userns=()
  [ "$(id -u)" -eq 0 ] || userns=(-r)
  exec unshare -m "${userns[@]}" --propagation private -- \
    bash -c 'export CINFER_HIDE_SYSTEM_NS=$$; exec "$0" "$@"' "$0" "${args[@]}"
fi

# ---- which packages ----------------------------------------------------------------------------
toolchain_re='^(libc6-dev|linux-libc-dev|libcrypt-dev|libnsl-dev|libtirpc-dev|rpcsvc-proto|libgcc-[0-9]+-dev|libstdc\+\+-[0-9]+-dev)$'
runtime_re='^(libc6|libgcc-s1|libstdc\+\+6|libpcre2-8-0|zlib1g|libselinux1)$' # any Ubuntu's tools link these
installed=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort -u)
carried=()
for deb in "$deps"/*.deb; do
  [ -e "$deb" ] || continue
  name=$(basename "$deb")
  carried+=("${name%%_*}") # apt-get download names them PACKAGE_VERSION_ARCH.deb
done
hidden=$( { printf '%s\n' ${carried[@]+"${carried[@]}"}; grep -E -- '-dev$' <<<"$installed"; } |
          sort -u | grep -Fxf <(echo "$installed") | grep -Ev "$toolchain_re" | grep -Ev "$runtime_re" || true)
toolchain=$(grep -E "$toolchain_re" <<<"$installed" || true)
carried_installed=$(printf '%s\n' ${carried[@]+"${carried[@]}"} | grep -Fxf <(echo "$installed") |
                    grep -Ev "$runtime_re" || true)

# dpkg's paths, on a merged /usr (/lib -> usr/lib) as the files really are
dpkg_paths() {
  [ -n "$*" ] || return 0
  # shellcheck disable=SC2046
  dpkg-query -L "$@" 2>/dev/null | grep '^/' |
    if [ -L /lib ]; then sed -E 's#^/(lib|lib32|lib64|libx32|bin|sbin)/#/usr/\1/#'; else cat; fi | sort -u
}

no_input_re='^/usr/share/(doc|doc-base|man|info|lintian|bug)/' # manuals and such stay: no build input
tmp=$(mktemp -d /tmp/hide_system.XXXXXX)
mount -t tmpfs tmpfs "$tmp"
tops=""
# on the way out the mounts go, and the folder they were made in with them (made in the real
# /tmp, it stays there unless removed, and a mount point cannot be removed while it is one)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  for top in $tops; do umount -l "$top" 2>/dev/null || true; done
  umount -l "$tmp" 2>/dev/null || true
  rmdir "$tmp" 2>/dev/null || true
}
trap cleanup EXIT
# shellcheck disable=SC2086 # package names, one word each
dpkg_paths $hidden | grep -Ev "$no_input_re" >"$tmp/hidden_paths" || true
# shellcheck disable=SC2086
dpkg_paths $toolchain >"$tmp/toolchain_paths"

# ---- whiteouts, one overlay per top folder -------------------------------------------------------
n_whiteouts=0
n_paths=0
tops=$( { echo /usr/include; grep -E '^/usr/[^/]+/' "$tmp/hidden_paths" | cut -d/ -f1-3; } | sort -u)
# (a -dev package's files outside /usr, if any, are no build input: /etc files, say)
for top in $tops; do
  if [ ! -d "$top" ] || [ -L "$top" ]; then continue; fi
  find "$top" -mindepth 1 \( -type f -o -type l \) | sort >"$tmp/all"
  if [ "$top" = /usr/include ]; then # everything but the toolchain's headers
    comm -23 "$tmp/all" "$tmp/toolchain_paths" >"$tmp/hide"
  else # the hidden packages' files that are there
    comm -12 "$tmp/all" "$tmp/hidden_paths" >"$tmp/hide"
  fi
  [ -s "$tmp/hide" ] || continue
  comm -23 "$tmp/all" "$tmp/hide" >"$tmp/keep"
  n_paths=$((n_paths + $(wc -l <"$tmp/hide")))
  [ "$list" = 0 ] || cat "$tmp/hide"
  # the highest folder under $top holding nothing that stays, else the path itself
  awk -v top="$top" '
    FILENAME == ARGV[1] { # a kept path: each folder above it must stay
      p = $0; while ((i = match(p, /\/[^\/]*$/)) > 0) { p = substr(p, 1, i - 1); if (p == top || p in need) break; need[p] = 1 }
      next }
    { rest = substr($0, length(top) + 2); n = split(rest, part, "/"); p = top; out = $0
      for (k = 1; k < n; k++) { p = p "/" part[k]; if (!(p in need)) { out = p; break } }
      if (!(out in done)) { done[out] = 1; print out } }' "$tmp/keep" "$tmp/hide" >"$tmp/whiteouts"
  up="$tmp/up$top" work="$tmp/work$top"
  mkdir -p "$up" "$work"
  sed "s#^$top/#$up/#" "$tmp/whiteouts" >"$tmp/nodes"
  sed 's#/[^/]*$##' "$tmp/nodes" | sort -u | xargs -r -d '\n' mkdir -p
  if command -v python3 >/dev/null; then # thousands of them: one process, not one per node
    python3 -c 'import os, stat, sys
for line in open(sys.argv[1]): os.mknod(line.rstrip("\n"), stat.S_IFCHR | 0o600, 0)' "$tmp/nodes"
  else
    while IFS= read -r node; do mknod "$node" c 0 0; done <"$tmp/nodes"
  fi
  n_whiteouts=$((n_whiteouts + $(wc -l <"$tmp/nodes")))
  mount -t overlay overlay -o "lowerdir=$top,upperdir=$up,workdir=$work" "$top" ||
    die "could not mount an overlay over $top (overlayfs in a mount namespace is needed)"
done

# ---- proof: the carried packages are gone, for gcc and the linker too -------------------------------
# shellcheck disable=SC2086
dpkg_paths $carried_installed | grep -Ev "$no_input_re" >"$tmp/carried_paths" || true
still=()
while IFS= read -r path; do
  if [ -e "$path" ] && [ ! -d "$path" ] || [ -L "$path" ]; then still+=("$path"); continue; fi
  case "$path" in
    /usr/include/*.h | /usr/include/*.hpp)
      rel=${path#/usr/include/}
      rel=${rel#"$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"/}
      if echo "#include <$rel>" | g++ -xc++ -E - >/dev/null 2>&1; then still+=("$path (#include <$rel> still compiles)"); fi ;;
    */lib*.so | */lib*.a)
      name=$(basename "$path")
      found=$(gcc -print-file-name="$name")
      [ "$found" = "$name" ] || still+=("$path (gcc finds $found)") ;;
  esac
done <"$tmp/carried_paths"
if [ ${#still[@]} -gt 0 ]; then
  printf '  %s\n' "${still[@]}" >&2
  die "${#still[@]} file(s) of the carried packages are still visible"
fi

n_hidden=$(grep -c . <<<"$hidden" || true)
echo "hide_system_deps: hidden $n_paths paths ($n_whiteouts whiteouts) of $n_hidden packages" \
  "(carried in $deps: ${carried_installed//$'\n'/ }; the others: every -dev package but the toolchain's)," \
  "and every header in /usr/include but the toolchain's" >&2
# a child, not exec, so that the cleanup runs after it
status=0
"$@" || status=$?
exit $status
