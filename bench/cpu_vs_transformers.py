#!/usr/bin/env python3
"""Greedy generation on the CPU: cinfer's reference path against transformers, in one run.

    bench/cpu_vs_transformers.py --model DIR [--prompt-tokens 10] [--new-tokens 32] [--threads 2]

Runs `build/cinfer run` and transformers' `generate` (float32, the same math as cinfer's
reference path, and bfloat16) on the same prompt, each in its own process under
/usr/bin/time, and prints one table: wall time of the whole process, time of the generation
alone, tokens/s, peak resident memory, and whether the greedy tokens equal cinfer's.
Needs a python with torch and transformers (scripts/make_fixtures.py makes one in
.venv-fixtures); the engine itself needs none of this.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HF_RUNNER = textwrap.dedent("""
    import json, sys, time, torch
    from transformers import AutoModelForCausalLM
    model_dir, dtype_name, threads, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ids = json.loads(sys.argv[5])
    torch.set_num_threads(threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    prompt = torch.tensor([ids])
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "tokens": out[0, len(ids):].tolist()}))
""")


def timed(cmd, env=None):
    """Runs cmd under /usr/bin/time -v; returns (stdout, stderr, wall seconds, peak RSS in MB)."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    hours, minutes, seconds = (float(g) if g else 0.0 for g in wall.groups())
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return proc.stdout, proc.stderr, hours * 3600 + minutes * 60 + seconds, int(rss.group(1)) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--python", default=sys.executable, help="python with torch+transformers")
    parser.add_argument("--cinfer", default=str(REPO / "build" / "cinfer"))
    args = parser.parse_args()

    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    ids = [(7919 * i + 1) % vocab for i in range(args.prompt_tokens)]  # fixed, spread over vocab

    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out, err, wall, rss = timed([args.cinfer, "run", "--model", args.model, "--tokens",
                                 " ".join(map(str, ids)), "--max-new-tokens", str(args.new_tokens),
                                 "--ignore-eos", "--threads", str(args.threads)], env)
    ours = [int(t) for t in out.split()]
    prefill = float(re.search(r"prompt: \d+ tokens in ([\d.]+) s", err).group(1))
    decode = re.search(r"([\d.]+) tokens/s after the first", err)
    decode_seconds = (len(ours) - 1) / float(decode.group(1)) if decode else 0.0
    rows.append(("cinfer (f32 math, bf16/f32 weights in place)", wall, prefill + decode_seconds,
                 rss, True))

    for dtype in ("float32", "bfloat16"):
        out, _, wall, rss = timed([args.python, "-c", HF_RUNNER, args.model, dtype,
                                   str(args.threads), str(args.new_tokens), json.dumps(ids)], env)
        result = json.loads(out.strip().splitlines()[-1])
        rows.append((f"transformers {dtype} (sdpa)", wall, result["seconds"], rss,
                     result["tokens"] == ours))

    print(f"\nmodel {args.model}: {args.prompt_tokens}-token prompt, {args.new_tokens} greedy tokens, "
          f"{args.threads} threads\n")
    print(f"| {'engine':<46} | process wall s | generate s | tokens/s | peak RSS MB | same tokens as cinfer |")
    print(f"|{'-' * 48}|---------------:|-----------:|---------:|------------:|:---------------------:|")
    for name, wall, seconds, rss, same in rows:
        print(f"| {name:<46} | {wall:14.2f} | {seconds:10.2f} | {args.new_tokens / seconds:8.2f} | "
              f"{rss:11.0f} | {'yes' if same else 'no':^21} |")


if __name__ == "__main__":
    main()
