#!/usr/bin/env python3
"""cinfer's attention ops beside torch SDPA and transformers' DiffLlama attention, in one table.

    scripts/bench_attention.py                                   # peers only, on the GPU
    scripts/bench_attention.py --cinfer build/bench_attention    # both: one line per cinfer kind
    scripts/bench_attention.py --cinfer-json saved.json          # merge a saved bench_attention run
    scripts/bench_attention.py --device cpu --dtype f32 --seq 32,64 --head-dim 16 --heads 4 \\
        --kv-heads 2 --cinfer build/bench_attention --cinfer-backend cpu   # smoke test, no GPU

The shapes are build/bench_attention's (bench/attention_bench.c), one row per variant, mode, head
dim and context length S:
  prefill  T = S queries over S keys, causal (torch: is_causal=True);
  decode   T = 1 query at position S - 1 over S keys (torch: is_causal=False, which with one query
           and no mask attends to all S keys: exactly the causal row of the last position).
Peers:
  standard      torch.nn.functional.scaled_dot_product_attention on q [1, H, T, D] and K/V
                [1, G, S, D] in --dtype, GQA by enable_gqa=True (no K/V copy per query head);
                the backend torch picks unless --sdpa-backend names one.
  differential  transformers' DiffLlama attention module (DiffLlamaAttention, or the sdpa class of
                transformers 4.x) with config._attn_implementation = "sdpa", timed whole; its four
                projections (q, k, v, o) are timed alone on the same input, and the attention is
                module minus projections: RoPE, the V split, the attention calls, the differential
                combination and the group norm; in decode also its cache write (a cache that
                writes the new row in place, as StaticCache does, so no K/V is re-concatenated).
Timing as bench_attention: one warm-up, then -r repetitions of --calls calls (default 1 prefill, 20
decode), device time by CUDA events (wall clock on the CPU), mean +- sd of ms per call. TFLOP/s
use bench_attention's causal formulas: standard 4*H*D*n_visible, differential 6*H*D*n_visible,
n_visible = T*pos0 + T*(T+1)/2. The ratio is cinfer TFLOP/s / peer TFLOP/s (= peer ms / cinfer ms):
above 1, cinfer is faster.

Without a GPU (--device cuda, the default) it says so and exits 0. Needs torch and transformers
(scripts/fixture_venv.py makes .venv-fixtures with them).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ensure_dependencies  # noqa: E402

PREFILL_CALLS, DECODE_CALLS = 1, 20
L2_FLUSH_BYTES = 256 << 20  # several times an H100/H200's 50 MiB L2, as bench_attention
DTYPES = {"f32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_BYTES = {"f32": 4, "bf16": 2, "fp16": 2}


def int_list(text):
    return [int(v) for v in text.split(",")]


def name_list(choices):
    def parse(text):
        names = text.split(",")
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(choices)}")
        return names
    return parse


# ---- the shapes and what they cost (bench/attention_bench.c's formulas) --------------------------

def plan_shapes(args):
    """One dict per (variant, mode, head dim, seq), in bench_attention's order."""
    shapes = []
    for head_dim in args.head_dim:
        for variant in ("standard", "diff"):
            if variant not in args.variant:
                continue
            for mode in ("prefill", "decode"):
                if mode not in args.mode:
                    continue
                for seq in args.seq:
                    n_tokens = 1 if mode == "decode" else seq
                    pos0 = seq - 1 if mode == "decode" else 0
                    shapes.append(costs({
                        "variant": variant, "mode": mode, "dtype": args.dtype,
                        "head_dim": head_dim, "seq": seq, "heads": args.heads,
                        "kv_heads": args.kv_heads, "n_tokens": n_tokens, "pos0": pos0}))
    return shapes


def costs(shape):
    t = shape["n_tokens"]
    visible = t * shape["pos0"] + t * (t + 1) / 2
    per_head = 6 if shape["variant"] == "diff" else 4
    shape["flops"] = per_head * shape["heads"] * shape["head_dim"] * visible
    shape["kv_bytes"] = (2 * shape["seq"] * shape["kv_heads"] * shape["head_dim"]
                         * DTYPE_BYTES[shape["dtype"]])
    return shape


def shape_key(row):
    return (row["variant"], row["mode"], row["dtype"], row["head_dim"], row["seq"],
            row["heads"], row["kv_heads"])


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12 if ms and ms > 0 else None


# ---- timing --------------------------------------------------------------------------------------

class Timer:
    """Device time by CUDA events on the current stream (wall clock on the CPU), as
    bench_attention: warm-up, then repetitions of `calls` calls, milliseconds per call."""

    def __init__(self, torch, device, flush_l2):
        self.torch, self.device = torch, device
        self.flush = (torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
                      if flush_l2 and device == "cuda" else None)

    def measure(self, fn, repetitions, calls):
        torch = self.torch
        fn()  # warm-up: kernel selection, lazy module loading, allocator growth
        if self.device == "cuda":
            torch.cuda.synchronize()
        ms = []
        for _ in range(repetitions):
            if self.flush is not None:
                self.flush.fill_(0x5A)
            if self.device == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                stop = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(calls):
                    fn()
                stop.record()
                stop.synchronize()
                ms.append(start.elapsed_time(stop) / calls)
            else:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                ms.append((time.perf_counter() - t0) * 1e3 / calls)
        return ms


def summary(ms):
    return {"mean_ms": statistics.mean(ms), "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
            "ms": ms}


# ---- the peers -----------------------------------------------------------------------------------

def sdpa_context(torch, backend):
    """--sdpa-backend: let torch choose (auto), or allow only the named backend."""
    import contextlib
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[backend]])


def run_sdpa(torch, shape, args, timer):
    dtype = getattr(torch, DTYPES[shape["dtype"]])
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    h, g, d, t, s = (shape["heads"], shape["kv_heads"], shape["head_dim"], shape["n_tokens"],
                     shape["seq"])

    def uniform(*size):  # [-1, 1), as bench_attention's inputs
        return torch.rand(*size, generator=gen, device=args.device, dtype=dtype) * 2 - 1
    q, k, v = uniform(1, h, t, d), uniform(1, g, s, d), uniform(1, g, s, d)
    causal = shape["mode"] == "prefill"  # one decode query sees all S keys: no mask at all

    def call():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                enable_gqa=True)
    with sdpa_context(torch, args.sdpa_backend):
        ms = timer.measure(call, args.repetitions, calls_for(shape, args))
    return {"peer": "torch sdpa" + ("" if args.sdpa_backend == "auto"
                                    else f" ({args.sdpa_backend})"), **summary(ms)}


class FixedPositionCache:
    """The least a decode step's cache does: write the new K/V row in place at position S - 1
    (as StaticCache's index_copy_) and hand back all S rows. Duck-typed for the module's
    cache.update call, so that repeated timed calls see the same position."""

    def __init__(self, keys, values, position):
        self.keys, self.values, self.position = keys, values, position

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys[:, :, self.position:self.position + 1] = key_states
        self.values[:, :, self.position:self.position + 1] = value_states
        return self.keys, self.values


def diffllama_attention_class():
    """The module transformers runs for _attn_implementation "sdpa": since 5.x one class that
    dispatches on the config (two attention calls, each with K and one half of V); in 4.x a
    separate sdpa class (V doubled to 2*D, one call)."""
    from transformers.models.diffllama import modeling_diffllama as m
    classes = getattr(m, "DIFFLLAMA_ATTENTION_CLASSES", None)
    if classes and "sdpa" in classes:
        return classes["sdpa"], "4.x: one SDPA call with V doubled to 2*D"
    return m.DiffLlamaAttention, "two attention calls, each K and one D-wide half of Vcat"


def run_diffllama(torch, shape, args, timer):
    import inspect
    import transformers
    from transformers import DiffLlamaConfig
    from transformers.models.diffllama.modeling_diffllama import DiffLlamaRotaryEmbedding
    dtype = getattr(torch, DTYPES[shape["dtype"]])
    h, g, d, t, s = (shape["heads"], shape["kv_heads"], shape["head_dim"], shape["n_tokens"],
                     shape["seq"])
    config = DiffLlamaConfig(hidden_size=h * d, intermediate_size=h * d, num_attention_heads=h,
                             num_key_value_heads=g, head_dim=d, num_hidden_layers=1,
                             vocab_size=16, max_position_embeddings=max(s, 2))
    config._attn_implementation = "sdpa"
    cls, path = diffllama_attention_class()
    torch.manual_seed(args.seed)
    module = cls(config, layer_idx=0).to(device=args.device, dtype=dtype).eval()
    rope = DiffLlamaRotaryEmbedding(config=config).to(args.device)
    hidden = torch.rand(1, t, h * d, device=args.device, dtype=dtype) * 2 - 1
    positions = torch.arange(shape["pos0"], shape["pos0"] + t, device=args.device)[None]
    cos, sin = rope(hidden, positions)
    kwargs = {}
    if shape["mode"] == "decode":
        keys = torch.rand(1, g, s, d, device=args.device, dtype=dtype) * 2 - 1
        values = torch.rand(1, g, s, d, device=args.device, dtype=dtype) * 2 - 1
        cache = FixedPositionCache(keys, values, s - 1)
        params = inspect.signature(module.forward).parameters
        name = next(n for n in ("cache", "past_key_values", "past_key_value") if n in params)
        kwargs[name] = cache
        if "cache_position" in params:
            kwargs["cache_position"] = positions[0]

    def whole():
        return module(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None,
                      **kwargs)
    o_input = torch.rand(1, t, h * d, device=args.device, dtype=dtype)

    def projections():  # the module's four linear layers on inputs of the same shapes
        module.q_proj(hidden), module.k_proj(hidden), module.v_proj(hidden)
        return module.o_proj(o_input)
    calls = calls_for(shape, args)
    with sdpa_context(torch, args.sdpa_backend):
        module_ms = timer.measure(whole, args.repetitions, calls)
    projection_ms = timer.measure(projections, args.repetitions, calls)
    # per repetition, so that the sd says how noisy the difference is
    attention_ms = [m - p for m, p in zip(module_ms, projection_ms)]
    return {"peer": "DiffLlama sdpa - proj", **summary(attention_ms),
            "module_ms": statistics.mean(module_ms),
            "projections_ms": statistics.mean(projection_ms),
            "peer_path": f"transformers {transformers.__version__}: {path}"}


def calls_for(shape, args):
    return args.calls or (DECODE_CALLS if shape["mode"] == "decode" else PREFILL_CALLS)


def measure_peers(args, shapes):
    import torch
    torch.set_num_threads(args.threads)
    timer = Timer(torch, args.device, args.flush_l2)
    rows = []
    with torch.inference_mode():
        for shape in shapes:
            print(f"bench_attention.py: {shape['variant']} {shape['mode']} D={shape['head_dim']} "
                  f"S={shape['seq']}", file=sys.stderr, flush=True)
            run = run_diffllama if shape["variant"] == "diff" else run_sdpa
            try:
                peer = run(torch, shape, args, timer)
            except Exception as error:  # noqa: BLE001 - a shape a peer cannot run is a row, too
                peer = {"peer": "torch sdpa" if shape["variant"] == "standard" else
                        "DiffLlama sdpa - proj", "failed": f"{type(error).__name__}: {error}"}
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            rows.append({**shape, **peer})
    return rows


# ---- cinfer's rows -------------------------------------------------------------------------------

def cinfer_command(args):
    cmd = [args.cinfer, "--attn", ",".join(args.cinfer_attn),
           "--head-dim", ",".join(map(str, args.head_dim)), "--seq", ",".join(map(str, args.seq)),
           "--heads", str(args.heads), "--kv-heads", str(args.kv_heads), "--dtype", args.dtype,
           "--mode", ",".join(args.mode), "--variant", ",".join(args.variant),
           "-r", str(args.repetitions), "--seed", str(args.seed), "--output", "json"]
    if args.calls:
        cmd += ["--calls", str(args.calls)]
    if args.flush_l2:
        cmd.append("--flush-l2")
    if args.cinfer_backend != "cuda":
        cmd += ["--backend", args.cinfer_backend]
    return cmd


def cinfer_rows(args):
    if args.cinfer_json:
        return json.loads(Path(args.cinfer_json).read_text())
    cmd = cinfer_command(args)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench_attention.py: {' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    if out.stdout.startswith("bench_attention: no CUDA device"):
        print(out.stdout.strip(), file=sys.stderr)
        return []
    return json.loads(out.stdout)


# ---- one table -----------------------------------------------------------------------------------

def merge(peer_rows, ours):
    """One line per (shape, cinfer kind); a shape cinfer did not run keeps one line of its own."""
    by_shape = {}
    for row in ours:
        by_shape.setdefault(shape_key(row), []).append(row)
    lines = []
    for peer in peer_rows:
        mine = by_shape.get(shape_key(peer), [None])
        for row in mine:
            line = dict(peer)
            line["peer_ms"] = peer.get("mean_ms")
            line["peer_std_ms"] = peer.get("std_ms")
            line["peer_tflops"] = tflops(peer["flops"], peer.get("mean_ms"))
            for key in ("mean_ms", "std_ms", "ms"):
                line.pop(key, None)
            if row is not None:
                line["cinfer_attn"] = row["attn"]
                line["cinfer_skipped"] = row.get("skipped")
                line["cinfer_ms"] = row.get("mean_ms")
                line["cinfer_std_ms"] = row.get("std_ms")
                line["cinfer_tflops"] = tflops(line["flops"], row.get("mean_ms"))
                line["cinfer_device"] = row.get("device")
            if line.get("cinfer_ms") and line.get("peer_ms") and line["peer_ms"] > 0:
                line["ratio"] = line["peer_ms"] / line["cinfer_ms"]
            lines.append(line)
    return lines


def fmt(value, spec, missing="—"):
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def print_table(lines, output, notes):
    if output == "json":
        print(json.dumps(lines, indent=1))
        return
    columns = ["variant", "mode", "dtype", "head_dim", "seq", "heads", "kv_heads", "cinfer_attn",
               "cinfer_ms", "cinfer_std_ms", "cinfer_tflops", "peer", "peer_ms", "peer_std_ms",
               "peer_tflops", "ratio", "cinfer_skipped", "failed"]
    if output == "csv":
        print(",".join(columns))
        for line in lines:
            cells = []
            for c in columns:
                v = line.get(c)
                cells.append("" if v is None else
                             '"' + str(v).replace('"', '""') + '"' if isinstance(v, str) else
                             f"{v:.6g}" if isinstance(v, float) else str(v))
            print(",".join(cells))
        return
    print("| variant | mode | dtype | D | seq | H/G | cinfer attn | cinfer ms | cinfer TFLOP/s "
          "| peer | peer ms | peer TFLOP/s | cinfer / peer |")
    print("| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for line in lines:
        if line.get("cinfer_skipped"):
            mine_ms, mine_tf = line["cinfer_skipped"], "—"
        elif line.get("cinfer_ms") is not None:
            mine_ms = f'{line["cinfer_ms"]:.4f} ± {line["cinfer_std_ms"]:.4f}'
            mine_tf = fmt(line.get("cinfer_tflops"), ".3g")
        else:
            mine_ms = mine_tf = "—"
        if line.get("failed"):
            peer_ms, peer_tf = f'failed: {line["failed"]}', "—"
        else:
            peer_ms = f'{line["peer_ms"]:.4f} ± {line["peer_std_ms"]:.4f}'
            peer_tf = fmt(line.get("peer_tflops"), ".3g")
        ratio = fmt(line.get("ratio"), ".2f")
        print(f'| {line["variant"]} | {line["mode"]} | {line["dtype"]} | {line["head_dim"]} | '
              f'{line["seq"]} | {line["heads"]}/{line["kv_heads"]} | '
              f'{line.get("cinfer_attn", "—")} | {mine_ms} | {mine_tf} | {line["peer"]} | '
              f'{peer_ms} | {peer_tf} | {ratio}{"x" if ratio != "—" else ""} |')
    print()
    for note in notes:
        print(f"- {note}")


def table_notes(args, lines):
    notes = []
    devices = sorted({line["cinfer_device"] for line in lines if line.get("cinfer_device")})
    if devices:
        notes.append("cinfer: build/bench_attention on " + "; ".join(devices) + ".")
    notes.append(f"Peers on {args.device}" + (f" ({args.device_name})" if args.device_name else "")
                 + f", torch {args.torch_version}; "
                 + ("device time by CUDA events" if args.device == "cuda" else "wall clock")
                 + f", mean ± sd of ms per call over {args.repetitions} repetitions after one "
                 "warm-up" + (", L2 flushed before each" if args.flush_l2 else "") + ".")
    notes.append("torch sdpa: scaled_dot_product_attention(q [1,H,T,D], K/V [1,G,S,D], "
                 "is_causal = prefill, enable_gqa=True), backend "
                 + ("chosen by torch" if args.sdpa_backend == "auto" else args.sdpa_backend) + ".")
    paths = sorted({line["peer_path"] for line in lines if line.get("peer_path")})
    if paths:
        notes.append("DiffLlama sdpa - proj: the DiffLlama attention module (config "
                     "_attn_implementation 'sdpa'; " + "; ".join(paths) + ") timed whole, "
                     "minus its q/k/v/o projections timed alone on the same inputs: the "
                     "attention figure includes RoPE, the V split and repeat, the combination and "
                     "group norm (and in decode the cache write), and in decode it is the "
                     "difference of two times the projections dominate, so read its sd.")
    notes.append("TFLOP/s: causal FLOPs, standard 4·H·D·n_visible, differential 6·H·D·n_visible "
                 "(bench/attention_bench.c); cinfer / peer = cinfer TFLOP/s over the peer's "
                 "(above 1: cinfer faster). Issue 4 asks for flash standard bf16 D=128 prefill "
                 "S=4096 >= 0.60 and flash diff >= 1.5.")
    return notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--head-dim", type=int_list, default=[64, 128])
    parser.add_argument("--seq", type=int_list, default=[512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--mode", type=name_list(["prefill", "decode"]), default=["prefill"])
    parser.add_argument("--variant", type=name_list(["standard", "diff"]),
                        default=["standard", "diff"])
    parser.add_argument("-r", "--repetitions", type=int, default=5)
    parser.add_argument("--calls", type=int, default=0,
                        help=f"calls per repetition (default {PREFILL_CALLS} prefill, "
                        f"{DECODE_CALLS} decode)")
    parser.add_argument("--flush-l2", action="store_true")
    parser.add_argument("--sdpa-backend", default="auto",
                        choices=["auto", "flash", "efficient", "cudnn", "math"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="md", choices=["md", "csv", "json"])
    parser.add_argument("--cinfer", help="also run this bench_attention binary")
    parser.add_argument("--cinfer-json", help="merge this saved `bench_attention --output json`")
    parser.add_argument("--cinfer-attn", type=name_list(["eager", "sdpa", "flash"]),
                        default=["eager", "sdpa", "flash"], help="kinds bench_attention runs")
    parser.add_argument("--cinfer-backend", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: bench_attention's CPU reference (f32), for a smoke test")
    args = parser.parse_args()
    if "diff" in args.variant and (args.heads % 2 or args.kv_heads % 2):
        parser.error("differential attention needs even --heads and --kv-heads (DiffLlama "
                     "splits V along KV heads)")
    ensure_dependencies(["torch", "transformers"], "bench_attention")
    import torch
    args.torch_version = torch.__version__
    args.device_name = None
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench_attention.py: no GPU (torch.cuda.is_available() is False); nothing "
                  "measured. --device cpu --dtype f32 with tiny shapes checks the table.")
            return 0
        args.device_name = torch.cuda.get_device_name()
    shapes = plan_shapes(args)
    ours = cinfer_rows(args) if (args.cinfer or args.cinfer_json) else []
    lines = merge(measure_peers(args, shapes), ours)
    print_table(lines, args.output, table_notes(args, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
