#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and run a model that ships in
# the repository on the CPU reference path.
#
# Until the project's own trained model lands, the model that ships is a test checkpoint made by
# scripts/make_fixtures.py from transformers' DiffLlamaForCausalLM with random weights: its tokens
# are not text, but they are exactly transformers' own (tests/test_fixtures.cpp checks them).
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-tests/fixtures/diffllama_gqa2_llama3}
PROMPT=${PROMPT:-"1 15 7 42 99 3 64"}

scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target cinfer_cli >/dev/null

echo "== cinfer inspect --model $MODEL"
build/cinfer inspect --model "$MODEL" | sed -n '1,/^GPU/p'

echo
echo "== greedy: cinfer run --model $MODEL --tokens \"$PROMPT\" --max-new-tokens 24"
build/cinfer run --model "$MODEL" --tokens "$PROMPT" --max-new-tokens 24 --ignore-eos

echo
echo "== sampled: --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7 (same seed, same tokens)"
build/cinfer run --model "$MODEL" --tokens "$PROMPT" --max-new-tokens 24 --ignore-eos \
  --temperature 0.8 --top-k 40 --top-p 0.95 --seed 7

echo
out=$(mktemp -d)
echo "== prompt logits: --max-new-tokens 0 --dump-logits $out/logits.npy"
build/cinfer run --model "$MODEL" --tokens "$PROMPT" --max-new-tokens 0 --dump-logits "$out/logits.npy"
echo "wrote $(stat -c %s "$out/logits.npy") bytes: float32 [$(echo "$PROMPT" | wc -w), vocab_size]"
rm -rf "$out"
