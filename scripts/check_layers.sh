#!/usr/bin/env bash
# Fails when an #include points up a layer (README.md, "Layout"). Each top-level folder is a layer,
# and a file may include files of its own folder or of a lower layer only; folders of one rank
# (loaders and kernels) are peers that do not include each other. What it guards is the
# direction the design relies on: the kernels know nothing of models, the models nothing of
# sessions, the library nothing of its programs.
#
#   scripts/check_layers.sh             checks the tree; prints each offending include; exit 1 if any
#   scripts/check_layers.sh FILE...     checks these files only
#   scripts/check_layers.sh --self-test shows that the check fails on includes that point up or
#                                       across (scripts/test.sh runs it before the real check)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --self-test ]; then
  # a kernel that includes a model, a loader that includes a kernel, a program that reaches past
  # the public API: each must be refused; a model that includes a kernel must pass
  dir=$(mktemp -d "$PWD/kernels/.self_test.XXXXXX")
  trap 'rm -rf "$dir" loaders/.self_test_*.c models/.self_test_*.c programs/.self_test_*.c' EXIT
  printf '#include "../../models/model.h"\n' >"$dir/up.c"
  printf '#include "../kernels/backend.h"\n' >loaders/.self_test_across.c
  printf '#include "../kernels/backend.h"\n' >models/.self_test_down.c
  printf '#include "../engine/session.h"\n' >programs/.self_test_internal.c
  failed=0
  for bad in "$dir/up.c" loaders/.self_test_across.c programs/.self_test_internal.c; do
    if "$0" "$bad" >/dev/null; then echo "check_layers self-test: $bad passed, but must not"; failed=1; fi
  done
  "$0" models/.self_test_down.c >/dev/null || { echo "check_layers self-test: a model including a kernel was refused"; failed=1; }
  [ "$failed" = 0 ] && echo "check_layers self-test: up, across and past the public API refused, down allowed"
  exit "$failed"
fi

# rank of each layer, bottom first
declare -A rank=(
  [include]=0  # cinfer.h, the public API: includes nothing of the tree
  [common]=1   # status and errors, tensors, names of the enums, clocks, seeded draws, the config
  [loaders]=2  # safetensors, config.json, checkpoints, tokenizer, chat templates
  [kernels]=2  # the backend interface and its CPU and CUDA implementations
  [models]=3   # the architectures: descriptors, weights, forward graphs
  [engine]=4   # loading, sessions, generation, sampling: the public API's implementation
  [programs]=5 # cinfer run, inspect, tokenize, compare, bench
  [bench]=6    # micro-benchmarks of single ops (they reach into the kernels on purpose)
  [tests]=7    # tests may include anything
)

# Layers that may include only some of the layers below them. The programs stand on the public
# API and the common utilities: whatever `cinfer` does, a program linking the library can do too,
# and the engine's internals stay free to change under them. (bench/, below, reaches into the
# kernels on purpose: it measures single ops.)
declare -A only=(
  [programs]="include common"
)

violations=0
while IFS= read -r file; do
  layer=${file%%/*}
  [ -n "${rank[$layer]+x}" ] || { echo "check_layers: $file is in no layer (add its folder to scripts/check_layers.sh)"; violations=$((violations + 1)); continue; }
  dir=$(dirname "$file")
  while IFS= read -r include; do
    # relative to the file first, then the root (tests' style), then include/ (cinfer.h)
    target=""
    for candidate in "$dir/$include" "$include" "include/$include"; do
      if [ -f "$candidate" ]; then target=$(realpath --relative-to=. "$candidate"); break; fi
    done
    [ -n "$target" ] || continue # a system header spelled with quotes, or a generated one
    to=${target%%/*}
    [ "$to" = "$layer" ] && continue
    if [ -z "${rank[$to]+x}" ] || [ "${rank[$to]}" -ge "${rank[$layer]}" ]; then
      echo "check_layers: $file includes $target: $layer (rank ${rank[$layer]}) may not include $to (rank ${rank[$to]:-none})"
      violations=$((violations + 1))
    elif [ -n "${only[$layer]+x}" ] && [[ " ${only[$layer]} " != *" $to "* ]]; then
      echo "check_layers: $file includes $target: $layer may include only $layer, ${only[$layer]// /, }"
      violations=$((violations + 1))
    fi
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$file")
done < <(if [ $# -gt 0 ]; then realpath --relative-to=. "$@"; else
           git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp' | grep -v '^tests/fixtures/'; fi)

if [ "$violations" -gt 0 ]; then
  echo "check_layers: $violations include(s) point up a layer or across peers"
  exit 1
fi
echo "check_layers: every include points down a layer"
