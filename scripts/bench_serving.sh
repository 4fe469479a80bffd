#!/usr/bin/env bash
# The serving benchmark: `cinfer serve` and llama.cpp's `llama-server` side by side, on the same
# machine, checkpoint and workload, measured by an existing client through their OpenAI endpoints.
#
#   scripts/bench_serving.sh [options]
#
# Each server is started on a free 127.0.0.1 port, waited for (GET /health 200), measured at each
# concurrency (streaming chat completions, fixed input and output lengths, ignore_eos), then
# stopped (SIGTERM, then wait). Prints one markdown table, with cinfer/llama ratio rows when both
# ran; the table, the rows as JSON and CSV, the client's own reports and the server logs go under
# --out.
#
# options:
#   --model DIR          Hugging Face Llama folder (config.json, safetensors, tokenizer.json);
#                        default: build-bench-models/llama-<preset>-float32, made on first use by
#                        scripts/make_bench_llama.py (random weights, models/diffllama-tiny's
#                        tokenizer, a ChatML template)
#   --preset tiny|100m   the shape made when --model is not given (default tiny)
#   --server S           cinfer, llama or both (default: both where build/cinfer has `serve`,
#                        else llama with a note)
#   --concurrency LIST   requests in flight, one measurement each (default 1,8,32)
#   --input-len N        prompt tokens of each request, before the chat template (default 128)
#   --output-len N       tokens each request generates (ignore_eos; default 32)
#   --requests N         requests per concurrency level after the warm-up (default 64); GuideLLM
#                        ends the warm-up when --warmup requests have completed, then counts each
#                        request that ends after that: the measured count (column n) differs by a few
#   --warmup N           requests per level before the measured ones, not counted (default 4)
#   --threads N          CPU threads of each server (default: nproc - 1, at least 1: the client
#                        needs a core of its own, or the servers' spinning threads and the client
#                        take turns on the cores and latencies jump by 10-100x; measured on 2 cores)
#   --endpoint E         chat (/v1/chat/completions, default) or completions (/v1/completions)
#   --out DIR            results folder (default build-bench-serving/<date>-<time>)
#   --cinfer BIN         the cinfer binary (default build/cinfer)
#   --cinfer-args "..."  more options for `cinfer serve` (e.g. "--backend cuda --dtype bf16")
#   --llama-server BIN   a llama-server binary (default: built by scripts/build_llama_server.sh)
#   --llama-args "..."   more options for llama-server
#   --gguf FILE          the GGUF llama-server loads (default: --model converted by
#                        scripts/convert_to_gguf.py into build-bench-models/gguf/, reused after)
#   --startup-timeout S  seconds a server may take to answer /health with 200 (default 180)
#   --seed N             seed of the synthetic prompts (default 0)
#   -h, --help           this text
#
# The client is GuideLLM (PyPI `guidellm`, pinned below), chosen over aiperf and `vllm bench serve`:
#   - it is the one of the three that also runs on the GPU machine, where the other half of the
#     benchmark (cinfer on CUDA beside transformers' continuous batching) must run: that machine
#     installs nothing and takes 64 MiB of carried files, and its image already has torch and
#     transformers, so GuideLLM needs ~9 MiB of wheels there; aiperf is a ~1.2 GB venv of its own
#     (dash, kubernetes, optuna, pyarrow, ...) and vLLM is the whole engine (~9.5 GB);
#   - its one heavy dependency, torch, is the torch that scripts/make_bench_llama.py and the GGUF
#     converter already need in .venv-fixtures: .venv-bench holds GuideLLM and its light
#     dependencies (~370 MB) and sees .venv-fixtures' packages through a .pth file (appended to
#     sys.path, so .venv-bench's own versions win) instead of a second 5 GB CUDA torch;
#   - it sends fixed-length synthetic prompts made with the checkpoint's own tokenizer folder, with
#     `ignore_eos: true`, `stop: null` and `max_completion_tokens` set by itself, and writes JSON and
#     CSV.
# What it cannot give: the distribution of every gap between streamed tokens (vLLM's ITL). It keeps
# per request the first and last token times and the token count, so:
#   TTFT = first content chunk - request sent                     (guidellm time_to_first_token_ms)
#   TPOT = (last token - first token) / (output tokens - 1)       (guidellm inter_token_latency_ms;
#          vLLM's TPOT; aiperf calls it ITL)
#   ITL  = (last token - request sent) / output tokens            (guidellm time_per_output_token_ms:
#          the mean time per token of a request counting its first, i.e. end-to-end latency per
#          token)
# each as p50/p99 over the measured requests (weighted by their tokens, equal weights here since
# every request has the same output length); req/s and output tok/s over the measured window.
#
# Everything installed lives in git-ignored folders of the repository, made on first use and reused
# (so after one run with PyPI this works offline): .venv-fixtures/ (torch, transformers), .venv-bench/
# (GuideLLM), build-llama/ (llama.cpp's source and llama-server), build-bench-models/ (checkpoints,
# GGUF files). Measured on the 2-core development machine, first use: .venv-fixtures 8 min (a CUDA
# torch from PyPI, beside the llama.cpp build), .venv-bench 2 min, llama-server 19 min (beside the
# torch install and another engineer's compile), GGUF conversion 35 s (the tiny checkpoint); one run
# of the default workload on llama-server alone (3 levels of 68 requests) 1 min 15 s.
#
# The client itself takes CPU: GUIDELLM__MAX_WORKER_PROCESSES=1 keeps it to one worker process, and
# the servers get one core fewer than the machine has (--threads). With llama-server at 2 threads on
# the 2-core machine the client and ggml's spinning threads took turns: 0.64 req/s and ITL p99
# 588 ms at concurrency 1, against 4.8 req/s and 5.8 ms with 1 thread.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GUIDELLM_VERSION=0.8.1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "bench_serving.sh: error: $*" >&2; exit 1; }
note() { echo "[bench_serving] $*" >&2; }

model="" preset=tiny server="" concurrency=1,8,32 input_len=128 output_len=32 requests=64 warmup=4
threads=$(($(nproc) > 1 ? $(nproc) - 1 : 1)) endpoint=chat out="" cinfer_bin="$REPO_ROOT/build/cinfer" cinfer_args="" llama_bin=""
llama_args="" gguf="" startup_timeout=180 seed=0
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || case "$1" in -h|--help) ;; *) die "option '$1' needs a value (see --help)" ;; esac
  case "$1" in
    --model) model=$2 ;;
    --preset) preset=$2 ;;
    --server) server=$2 ;;
    --concurrency) concurrency=$2 ;;
    --input-len) input_len=$2 ;;
    --output-len) output_len=$2 ;;
    --requests) requests=$2 ;;
    --warmup) warmup=$2 ;;
    --threads) threads=$2 ;;
    --endpoint) endpoint=$2 ;;
    --out) out=$2 ;;
    --cinfer) cinfer_bin=$2 ;;
    --cinfer-args) cinfer_args=$2 ;;
    --llama-server) llama_bin=$2 ;;
    --llama-args) llama_args=$2 ;;
    --gguf) gguf=$2 ;;
    --startup-timeout) startup_timeout=$2 ;;
    --seed) seed=$2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench_serving.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift 2
done

# ---- the command line, checked before anything is installed or started --------------------------
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "input-len:$input_len" "output-len:$output_len" "requests:$requests" "threads:$threads" \
            "startup-timeout:$startup_timeout"; do
  if ! is_uint "${pair#*:}" || [ "${pair#*:}" -eq 0 ]; then
    die "--${pair%%:*} must be a positive integer, not '${pair#*:}'"
  fi
done
is_uint "$warmup" || die "--warmup must be an integer >= 0, not '$warmup'"
is_uint "$seed" || die "--seed must be an integer >= 0, not '$seed'"
[[ "$concurrency" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "--concurrency must be a list like 1,8,32, not '$concurrency'"
max_conc=$(tr ',' '\n' <<<"$concurrency" | sort -n | tail -n 1)
case "$endpoint" in
  chat) route=/v1/chat/completions ;;
  completions) route=/v1/completions ;;
  *) die "--endpoint must be chat or completions, not '$endpoint'" ;;
esac
case "$preset" in tiny|100m) ;; *) die "--preset must be tiny or 100m, not '$preset'" ;; esac

# `cinfer serve` is being written: a binary without it is told apart from a broken one
cinfer_has_serve() {
  [ -x "$cinfer_bin" ] && "$cinfer_bin" --help 2>&1 | grep -qE '^[[:space:]]*(cinfer[[:space:]]+)?serve([[:space:]]|$)'
}
cinfer_missing_reason() {
  if [ ! -x "$cinfer_bin" ]; then
    echo "$cinfer_bin does not exist or is not executable (build it: cmake -S . -B build && cmake --build build)"
  else
    echo "$cinfer_bin has no 'serve' command (its --help lists: $("$cinfer_bin" --help 2>&1 |
      grep -E '^  [a-z]+ ' | awk '{print $1}' | sort -u | paste -sd, -)); build a tree that has \`cinfer serve\`, or use --server llama"
  fi
}
case "$server" in
  "")
    if cinfer_has_serve; then servers=(cinfer llama)
    else servers=(llama); note "only llama-server: $(cinfer_missing_reason)"; fi ;;
  cinfer) servers=(cinfer) ;;
  llama) servers=(llama) ;;
  both) servers=(cinfer llama) ;;
  *) die "--server must be cinfer, llama or both, not '$server'" ;;
esac
if [[ " ${servers[*]} " == *" cinfer "* ]] && ! cinfer_has_serve; then
  die "--server $server: $(cinfer_missing_reason)"
fi

out=${out:-"$REPO_ROOT/build-bench-serving/$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# ---- what the run needs, each made once and reused ------------------------------------------------
if [ -z "$model" ]; then
  model="$REPO_ROOT/build-bench-models/llama-$preset-float32"
  if [ ! -f "$model/config.json" ]; then
    note "making the benchmark checkpoint $model"
    python3 "$REPO_ROOT/scripts/make_bench_llama.py" --preset "$preset" --out "$model" >&2
  fi
fi
[ -f "$model/config.json" ] || die "--model $model: no config.json there"
[ -f "$model/tokenizer.json" ] || die "--model $model: no tokenizer.json there (the client tokenizes the synthetic prompts with it)"
model=$(cd "$model" && pwd)

# GuideLLM in .venv-bench, torch shared with .venv-fixtures (see the header)
venv="$REPO_ROOT/.venv-bench"
client_ok() { "$venv/bin/python" -c "import guidellm, torch, transformers" >/dev/null 2>&1 &&
              [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("guidellm"))')" = "$GUIDELLM_VERSION" ]; }
if ! client_ok; then
  note "installing GuideLLM $GUIDELLM_VERSION into $venv (once)"
  fixtures_py="$REPO_ROOT/.venv-fixtures/bin/python"
  if ! "$fixtures_py" -c "import torch, transformers" >/dev/null 2>&1; then
    # scripts/fixture_venv.py creates .venv-fixtures (torch, transformers) as every script of
    # the project does; make_bench_llama.py --help does nothing else once its imports succeed
    python3 "$REPO_ROOT/scripts/make_bench_llama.py" --help >/dev/null
  fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  fixtures_site=$("$fixtures_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$fixtures_site" >"$site/_cinfer_fixtures.pth"
  "$venv/bin/python" -m pip install --disable-pip-version-check "guidellm==$GUIDELLM_VERSION" >&2 ||
    die "could not install guidellm==$GUIDELLM_VERSION into $venv (the first run needs PyPI)"
  client_ok || die "guidellm, torch or transformers do not import in $venv; delete it and run again"
fi

if [[ " ${servers[*]} " == *" llama "* ]]; then
  if [ -z "$llama_bin" ]; then
    llama_bin=$("$REPO_ROOT/scripts/build_llama_server.sh" | tail -n 1)
  fi
  [ -x "$llama_bin" ] || die "--llama-server $llama_bin is not executable"
  if [ -z "$gguf" ]; then
    # the checkpoint's own dtype, converted as is: both servers compute from the same weights
    dtype=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(c.get("dtype") or c.get("torch_dtype") or "float32")' "$model/config.json")
    case "$dtype" in float32) outtype=f32 ;; bfloat16) outtype=bf16 ;; float16) outtype=f16 ;;
      *) die "$model/config.json: dtype '$dtype' (expected float32, bfloat16 or float16)" ;; esac
    gguf="$REPO_ROOT/build-bench-models/gguf/$(basename "$model")-$(echo -n "$model" | sha1sum | cut -c1-8)-$outtype.gguf"
    newest=$(find "$model" -maxdepth 1 \( -name '*.safetensors' -o -name '*.json' \) -newer "$gguf" 2>/dev/null | head -n 1 || true)
    if [ ! -f "$gguf" ] || [ -n "$newest" ]; then
      note "converting $model to $gguf"
      mkdir -p "$(dirname "$gguf")"
      python3 "$REPO_ROOT/scripts/convert_to_gguf.py" "$model" "$gguf" --outtype "$outtype" >"$out/convert.log" 2>&1 ||
        { tail -n 20 "$out/convert.log" >&2; die "GGUF conversion failed (log: $out/convert.log)"; }
    fi
  fi
  [ -f "$gguf" ] || die "--gguf $gguf does not exist"
fi

# ---- servers --------------------------------------------------------------------------------------
server_pid=""
stop_server() {
  [ -n "$server_pid" ] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$server_pid" 2>/dev/null && [ $waited -lt 60 ]; do sleep 0.5; waited=$((waited + 1)); done
    if kill -0 "$server_pid" 2>/dev/null; then
      note "server $server_pid still running 30 s after SIGTERM; SIGKILL"
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server NAME LOG CMD...: runs CMD in the background and waits for GET /health to answer 200
start_server() {
  local name=$1 log=$2; shift 2
  note "starting $name: $*"
  "$@" >"$log" 2>&1 &
  server_pid=$!
  local deadline=$((SECONDS + startup_timeout)) code
  while :; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      wait "$server_pid" 2>/dev/null && rc=0 || rc=$?
      server_pid=""
      echo "---- last lines of $log" >&2; tail -n 30 "$log" >&2
      die "$name exited (status $rc) before answering GET /health"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/health" || true)
    [ "$code" = 200 ] && break
    if [ $SECONDS -ge $deadline ]; then
      echo "---- last lines of $log" >&2; tail -n 30 "$log" >&2
      stop_server
      die "$name did not answer GET /health with 200 within ${startup_timeout}s (last answer: $([ "${code:-000}" = 000 ] && echo "no connection" || echo "HTTP $code"))"
    fi
    sleep 0.5
  done
  note "$name ready on port $port"
}

# Context of llama-server: -c is shared by its -np slots, each slot needs the prompt, the chat
# template around it (ChatML: ~20 tokens as plain text), BOS and the output.
per_slot=$((input_len + output_len + 128))

run_client() { # NAME: GuideLLM at every concurrency level against the server on $port
  local name=$1 dir="$out/$1"
  note "$name: $requests requests (+$warmup warm-up) at concurrency $concurrency, input $input_len, output $output_len"
  # run in the results folder: GuideLLM reads a .env file from its working directory
  (cd "$dir" && env HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
      GUIDELLM__MAX_WORKER_PROCESSES=1 \
    "$venv/bin/guidellm" run \
      --backend "kind=openai_http,target=http://127.0.0.1:$port,request_format=$route" \
      --profile "kind=concurrent,streams=$max_conc,warmup=$warmup" \
      --override profile.streams "$concurrency" \
      --constraint "kind=max_requests,count=$((requests + warmup))" \
      --data "kind=synthetic_text,prompt_tokens=$input_len,output_tokens=$output_len" \
      --tokenizer "kind=huggingface_auto,model=$model" \
      --seed "kind=static,value=$seed" \
      --output "kind=json,path=$dir/guidellm.json" --output "kind=csv,path=$dir/guidellm.csv" \
      --disable-console-interactive) >"$dir/client.log" 2>&1 ||
    { tail -n 30 "$dir/client.log" >&2; die "$name: guidellm failed (log: $dir/client.log)"; }
}

# llama.cpp tokenizes with its own C++ BPE, given the pre-tokenizer by name (scripts/convert_to_gguf.py
# names it for tokenizers it does not know): the same text must give the same ids as tokenizer.json,
# or the two servers would be measured on different prompts.
check_llama_tokenizer() {
  local rc=0
  "$venv/bin/python" - "$model/tokenizer.json" "http://127.0.0.1:$port/tokenize" <<'EOF' >"$out/llama/tokenize_check.txt" 2>&1 || rc=$?
import json, sys, urllib.request
from tokenizers import Tokenizer
text = ("In the beginning God created the heaven and the earth. 1234567 tokens, émigré café naïve 😀 "
        "it's    spaced\n\nout\t<|im_start|>user\nHello<|im_end|>")
ours = Tokenizer.from_file(sys.argv[1]).encode(text).ids
req = urllib.request.Request(sys.argv[2], data=json.dumps({"content": text, "add_special": True}).encode(),
                             headers={"Content-Type": "application/json"})
theirs = json.load(urllib.request.urlopen(req, timeout=30))["tokens"]
print(f"tokenizer.json: {len(ours)} ids, llama-server /tokenize: {len(theirs)} ids: "
      f"{'same' if ours == theirs else 'DIFFERENT'}\n{ours}\n{theirs}")
sys.exit(0 if ours == theirs else 1)
EOF
  if [ $rc -eq 0 ]; then note "llama-server tokenizes as tokenizer.json does ($(head -n 1 "$out/llama/tokenize_check.txt"))"
  else note "WARNING: llama-server and tokenizer.json tokenize differently; see $out/llama/tokenize_check.txt"; fi
}

for name in "${servers[@]}"; do
  mkdir -p "$out/$name"
  port=$(free_port)
  if [ "$name" = cinfer ]; then
    # shellcheck disable=SC2086  # --cinfer-args is split into options on purpose
    start_server cinfer "$out/cinfer/server.log" "$cinfer_bin" serve --model "$model" --host 127.0.0.1 \
      --port "$port" --max-seqs "$max_conc" --threads "$threads" $cinfer_args
  else
    # shellcheck disable=SC2086
    start_server llama-server "$out/llama/server.log" "$llama_bin" -m "$gguf" --host 127.0.0.1 \
      --port "$port" -np "$max_conc" -c $((max_conc * per_slot)) --threads "$threads" \
      --threads-batch "$threads" --alias "$(basename "$model")" --metrics --no-webui $llama_args
    check_llama_tokenizer
  fi
  run_client "$name"
  stop_server
done

# ---- one table --------------------------------------------------------------------------------------
report_args=(--out "$out" --output-len "$output_len" --input-len "$input_len")
for name in "${servers[@]}"; do report_args+=(--run "$name=$out/$name/guidellm.json"); done
report_rc=0  # 1: a check under the table failed (errors, wrong output lengths, prompt counts differ)
python3 "$REPO_ROOT/scripts/bench_serving_report.py" "${report_args[@]}" || report_rc=$?
note "results: $out (table.md, results.json, results.csv; per server guidellm.json, server.log, client.log)"
exit $report_rc
