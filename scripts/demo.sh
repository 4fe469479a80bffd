#!/usr/bin/env bash
# The main job on a fresh machine: install what is missing, build, and have the model that ships
# in the repository (models/diffllama-tiny, a 5.5M-parameter DiffLlama trained by
# scripts/train_tiny.py on the King James Bible) write text on the CPU reference path, and on the
# GPU too when this machine has one.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/diffllama-tiny}
PROMPT=${PROMPT:-"And the LORD spake unto Moses, saying,"}

scripts/install_deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target cinfer_cli >/dev/null

echo "== cinfer inspect --model $MODEL"
build/cinfer inspect --model "$MODEL" | sed -n '1,/^GPU/p'

echo
echo "== cinfer tokenize --model $MODEL --text \"$PROMPT\""
build/cinfer tokenize --model "$MODEL" --text "$PROMPT"

echo
echo "== greedy, streamed as it is generated (CPU reference path; speed on stderr)"
printf '%s' "$PROMPT"
build/cinfer run --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 48

echo
echo "== sampled: --temperature 0.8 --top-k 40 --seed 7 (same seed, same text)"
printf '%s' "$PROMPT"
build/cinfer run --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 96 \
  --temperature 0.8 --top-k 40 --seed 7

if build/cinfer --help | grep -q "^  serve"; then # built where libmicrohttpd is
  echo
  echo "== cinfer serve: the OpenAI API over HTTP; one streamed completion through curl"
  log=$(mktemp)
  build/cinfer serve --model "$MODEL" --port 0 >"$log" 2>&1 &
  server=$!
  port=""
  for _ in $(seq 100); do
    port=$(sed -n "s/.*serving '.*' on http:\/\/[^:]*:\([0-9]*\).*/\1/p" "$log")
    [ -n "$port" ] && break
    sleep 0.1
  done
  if [ -n "$port" ] && command -v curl >/dev/null; then
    echo "\$ curl localhost:$port/v1/completions -d '{\"prompt\": \"$PROMPT\", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}'"
    curl -sN "localhost:$port/v1/completions" -H 'Content-Type: application/json' \
      -d "{\"prompt\": \"$PROMPT\", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}" |
      head -n 6 || true # head leaves early: curl's broken pipe is expected
    echo "..."
  else
    cat "$log"
  fi
  kill -TERM "$server" && wait "$server" || true
  rm -f "$log"
fi

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo
  echo "== the same on the GPU: --backend cuda --dtype bf16"
  printf '%s' "$PROMPT"
  build/cinfer run --model "$MODEL" --prompt "$PROMPT" --max-new-tokens 96 \
    --temperature 0.8 --top-k 40 --seed 7 --backend cuda --dtype bf16
  echo
  echo "== cinfer compare: the GPU against the CPU reference, layer by layer"
  build/cinfer compare --model "$MODEL" --dtype f32 \
    --tokens "$(build/cinfer tokenize --model "$MODEL" --ids --text "$PROMPT")"
else
  echo
  echo "(no NVIDIA GPU here: the CUDA backend is built but not run; see scripts/gpu_check.sh)"
fi
