#!/usr/bin/env python3
"""The `cinfer bench` tests run through transformers, so that one table holds both engines.

    scripts/bench_hf.py --model DIR -p 64 -n 16                     # a checkpoint
    scripts/bench_hf.py --config bench/shapes/diffllama-0.3b-handcut.json -p 512 -n 128 \\
        --device cuda --dtype bfloat16 --attn sdpa,eager            # random weights of a shape
    scripts/bench_hf.py --model DIR -p 64 -n 16 --cinfer build/cinfer   # both, one table

Definitions match programs/bench.c exactly:
  pp<N>  one forward over B prompts of N tokens (input_ids [B, N]) with a fresh KV cache, logits
         of the last tokens only (logits_to_keep=1); B·N / seconds.
  tg<N>  N forwards of one token of each of the B sequences through the KV cache; B·N / seconds.
  @ d<D> the test runs after D tokens of each sequence were put in the cache (untimed).
  -b B   batch sizes (default 1): B sequences in lockstep, no padding, as cinfer runs them.
The prompt ids are the same pseudo-random ids cinfer draws (splitmix64 from --seed; sequence b
reads ids [b·L, (b+1)·L) with L the longest depth + test, as programs/bench.c does), decode feeds
them instead of sampling, one warm-up run precedes -r timed runs, and CUDA is synchronized before
every clock read. On the CPU transformers runs in float32, the math cinfer's reference path does.
Needs torch and transformers (scripts/make_fixtures.py makes .venv-fixtures with them).
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MASK64 = (1 << 64) - 1


def prompt_ids(seed, count, vocab_size):
    """programs/bench.c's next_random: splitmix64, the id is the output modulo the vocabulary."""
    state, ids = seed, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        ids.append((z ^ (z >> 31)) % vocab_size)
    return ids


def int_list(text):
    return [int(v) for v in text.split(",")]


def human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}"
        n /= 1024


def human_count(n):
    for unit in ("", " K", " M", " B", " T"):
        if n < 1000 or unit == " T":
            return f"{n:.2f}{unit}"
        n /= 1000


def load_model(args, dtype, attn):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                     attn_implementation=attn)
    else:
        config = AutoConfig.from_pretrained(args.config)
        config._attn_implementation = attn
        torch.manual_seed(args.seed)
        with torch.device(args.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(args.device).eval()


def run_once(model, ids, depth, n_prompt, n_gen, device):
    """ids: one list of ids per sequence, all of one length."""
    import torch
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    # transformers 5.2x renamed forward's past_key_values to cache (the old name warns, and goes
    # in 5.40): pass it under the name this version's forward takes
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    kwargs = {cache_arg: cache, "use_cache": True, "logits_to_keep": 1}
    tokens = torch.tensor(ids, device=device)
    if depth:
        model(tokens[:, :depth], **kwargs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    if n_prompt:
        model(tokens[:, depth:depth + n_prompt], **kwargs)
    for i in range(n_gen):
        model(tokens[:, depth + i:depth + i + 1], **kwargs)
    sync()
    return time.perf_counter() - start


def measure(args):
    import torch
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for attn in args.attn.split(","):
        model = load_model(args, dtype, attn)
        n_params = sum(p.numel() for p in model.parameters())
        n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        tests = [(p, 0) for p in args.n_prompt if p] + [(0, n) for n in args.n_gen if n]
        longest = max(d + p + n for d in args.n_depth for p, n in tests)
        # sequence-major, as programs/bench.c draws them: sequence b's ids follow sequence b - 1's
        drawn = prompt_ids(args.seed, max(args.batch_size) * longest, model.config.vocab_size)
        label = args.model or args.config
        with torch.inference_mode():
            for batch, depth in ((b, d) for b in args.batch_size for d in args.n_depth):
                ids = [drawn[b * longest:(b + 1) * longest] for b in range(batch)]
                for n_prompt, n_gen in tests:
                    run_once(model, ids, depth, n_prompt, n_gen, args.device)  # warm-up
                    seconds = [run_once(model, ids, depth, n_prompt, n_gen, args.device)
                               for _ in range(args.repetitions)]
                    tokens = batch * (n_prompt or n_gen)
                    tps = [tokens / s for s in seconds]
                    test = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
                    if depth:
                        test += f" @ d{depth}"
                    rows.append({
                        "model": label.rstrip("/"), "arch": model.config.architectures[0]
                        if model.config.architectures else type(model).__name__,
                        "weight_bytes": n_bytes, "n_params": n_params,
                        "backend": f"transformers-{args.device} ({attn})",
                        "dtype": str(args.dtype).replace("float32", "f32").replace(
                            "bfloat16", "bf16").replace("float16", "f16"),
                        "n_threads": args.threads, "batch": batch, "test": test,
                        "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth,
                        "repetitions": args.repetitions, "mean_tps": statistics.mean(tps),
                        "std_tps": statistics.stdev(tps) if len(tps) > 1 else 0.0,
                        "seconds": seconds})
        del model
    return rows


def cinfer_rows(args):
    cmd = [args.cinfer, "bench", "--model", args.model, "-p", ",".join(map(str, args.n_prompt)),
           "-n", ",".join(map(str, args.n_gen)), "-d", ",".join(map(str, args.n_depth)),
           "-b", ",".join(map(str, args.batch_size)),
           "-r", str(args.repetitions), "-t", str(args.threads), "--seed", str(args.seed),
           "--output", "json"]
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"bench_hf: {' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def print_table(rows, output):
    if output == "json":
        print(json.dumps(rows, indent=1))
        return
    if output == "csv":
        print("model,arch,weight_bytes,n_params,backend,dtype,n_threads,batch,test,n_prompt,"
              "n_gen,n_depth,repetitions,mean_tps,std_tps,seconds")
        for r in rows:
            seconds = ";".join(f"{s:.6g}" for s in r["seconds"])
            print(f'"{r["model"]}",{r["arch"]},{r["weight_bytes"]},{r["n_params"]},'
                  f'{r["backend"]},{r["dtype"]},{r["n_threads"]},{r["batch"]},{r["test"]},'
                  f'{r["n_prompt"]},{r["n_gen"]},{r["n_depth"]},{r["repetitions"]},'
                  f'{r["mean_tps"]:.6g},{r["std_tps"]:.6g},"{seconds}"')
        return
    print("| model | arch | size | params | backend | dtype | threads | batch | test | t/s |")
    print("| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        threads = r["n_threads"] or "default"
        print(f'| {r["model"]} | {r["arch"]} | {human_bytes(r["weight_bytes"])} | '
              f'{human_count(r["n_params"])} | {r["backend"]} | {r["dtype"]} | {threads} | '
              f'{r["batch"]} | {r["test"]} | {r["mean_tps"]:.2f} ± {r["std_tps"]:.2f} |')


def print_ratios(rows):
    """cinfer's throughput over each transformers backend's, test by test."""
    ours = {(r["batch"], r["test"]): r for r in rows
            if r["backend"] == "cpu" or r["backend"] == "cuda"}
    theirs = [r for r in rows if r["backend"].startswith("transformers")]
    if not ours or not theirs:
        return
    print()
    print("| batch | test | cinfer t/s | peer | peer t/s | cinfer / peer |")
    print("| ---: | ---: | ---: | --- | ---: | ---: |")
    for r in theirs:
        mine = ours.get((r["batch"], r["test"]))
        if mine:
            print(f'| {r["batch"]} | {r["test"]} | {mine["mean_tps"]:.2f} | {r["backend"]} '
                  f'{r["dtype"]} | {r["mean_tps"]:.2f} | {mine["mean_tps"] / r["mean_tps"]:.2f}x |')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Hugging Face checkpoint folder")
    source.add_argument("--config", help="a config.json: random weights of that shape")
    parser.add_argument("-p", "--n-prompt", type=int_list, default=[512])
    parser.add_argument("-n", "--n-gen", type=int_list, default=[128])
    parser.add_argument("-d", "--n-depth", type=int_list, default=[0])
    parser.add_argument("-b", "--batch-size", type=int_list, default=[1],
                        help="sequences decoded together (lockstep), e.g. 1,8,32")
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on the CPU, bfloat16 on CUDA")
    parser.add_argument("--attn", default="sdpa", help="attn_implementation(s), comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default="md", choices=["md", "csv", "json"])
    parser.add_argument("--cinfer", help="also run this cinfer binary's bench (--model only)")
    args = parser.parse_args()
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    if args.cinfer and not args.model:
        parser.error("--cinfer needs --model (cinfer bench reads checkpoints)")
    rows = cinfer_rows(args) if args.cinfer else []
    rows += measure(args)
    print_table(rows, args.output)
    if args.output == "md":
        print_ratios(rows)


if __name__ == "__main__":
    main()
