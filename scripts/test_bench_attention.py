#!/usr/bin/env python3
"""Checks scripts/bench_attention.py without a GPU: its cost formulas and table on made-up rows
(plain Python), then, where torch and a built bench_attention are at hand, one end-to-end run on
the CPU with tiny shapes (--device cpu, bench_attention --backend cpu).

    python3 scripts/test_bench_attention.py [path/to/bench_attention]

Not part of ctest: Python is not needed to build or test the engine."""
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_attention as b  # noqa: E402

FAILURES = []


def check(condition, what):
    print(("ok    " if condition else "FAIL  ") + what)
    if not condition:
        FAILURES.append(what)


def shape(variant, mode, seq, heads=2, kv_heads=2, head_dim=8):
    n_tokens = 1 if mode == "decode" else seq
    return b.costs({"variant": variant, "mode": mode, "dtype": "bf16", "head_dim": head_dim,
                    "seq": seq, "heads": heads, "kv_heads": kv_heads, "n_tokens": n_tokens,
                    "pos0": seq - 1 if mode == "decode" else 0})


def test_costs():
    # prefill S = 4 sees 1 + 2 + 3 + 4 = 10 keys; decode at position 3 sees 4
    check(shape("standard", "prefill", 4)["flops"] == 4 * 2 * 8 * 10, "standard prefill FLOPs")
    check(shape("diff", "prefill", 4)["flops"] == 6 * 2 * 8 * 10, "differential prefill FLOPs")
    check(shape("standard", "decode", 4)["flops"] == 4 * 2 * 8 * 4, "decode FLOPs")
    check(shape("standard", "decode", 4, kv_heads=1)["kv_bytes"] == 2 * 4 * 1 * 8 * 2,
          "decode K/V bytes: K and V, every KV head, bf16")


def test_merge_and_table():
    peer = {**shape("standard", "prefill", 4), "peer": "torch sdpa", "mean_ms": 2.0,
            "std_ms": 0.1, "ms": [2.0]}
    lonely = {**shape("diff", "prefill", 4), "peer": "DiffLlama sdpa - proj", "mean_ms": 3.0,
              "std_ms": 0.2, "ms": [3.0]}
    ours = [{**shape("standard", "prefill", 4), "attn": "flash", "mean_ms": 1.0, "std_ms": 0.0,
             "device": "GPU X"},
            {**shape("standard", "prefill", 4), "attn": "eager", "skipped": "skipped: no room"}]
    for row in ours:  # bench_attention's JSON has no cost fields the merge relies on
        row.pop("flops"), row.pop("kv_bytes")
    lines = b.merge([peer, lonely], ours)
    check(len(lines) == 3, "one line per cinfer kind, and one for a shape cinfer did not run")
    flash = next(line for line in lines if line.get("cinfer_attn") == "flash")
    check(abs(flash["ratio"] - 2.0) < 1e-12, "ratio = peer ms / cinfer ms")
    check(abs(flash["cinfer_tflops"] / flash["peer_tflops"] - 2.0) < 1e-9,
          "ratio = cinfer TFLOP/s / peer TFLOP/s")
    eager = next(line for line in lines if line.get("cinfer_attn") == "eager")
    check("ratio" not in eager, "a skipped cinfer row has no ratio")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        b.print_table(lines, "md", ["a note"])
    text = out.getvalue()
    check("| 2.00x |" in text, "md table shows the ratio")
    check("skipped: no room" in text, "md table shows why a row was skipped")
    check("- a note" in text, "md table ends with its notes")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        b.print_table(lines, "csv", [])
    rows = out.getvalue().strip().splitlines()
    check(len(rows) == 4 and rows[0].startswith("variant,mode,"), "csv: header and three rows")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        b.print_table(lines, "json", [])
    check(len(json.loads(out.getvalue())) == 3, "json: three objects")


def test_end_to_end(binary):
    python = HERE.parent / ".venv-fixtures" / "bin" / "python"
    python = str(python) if python.exists() else sys.executable
    has_torch = subprocess.run([python, "-c", "import torch, transformers"],
                               capture_output=True).returncode == 0
    if not has_torch or not binary or not Path(binary).exists():
        print("skip  end-to-end run (needs torch, transformers and a built bench_attention)")
        return
    common = ["--dtype", "f32", "--seq", "16,32", "--head-dim", "8", "--heads", "4",
              "--kv-heads", "2", "--mode", "prefill,decode", "-r", "2", "-t", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "cinfer.json"
        ran = subprocess.run([binary, "--backend", "cpu", "--output", "json", "--attn", "flash",
                              *[a for a in common if a not in ("-t", "1")]],
                             capture_output=True, text=True)
        check(ran.returncode == 0, "bench_attention --backend cpu --output json exits 0")
        saved.write_text(ran.stdout)
        merged = subprocess.run([python, str(HERE / "bench_attention.py"), "--device", "cpu",
                                 "--cinfer-json", str(saved), "--output", "json", *common],
                                capture_output=True, text=True,
                                env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
        check(merged.returncode == 0, "bench_attention.py --device cpu exits 0")
        lines = json.loads(merged.stdout) if merged.returncode == 0 else []
        check(len(lines) == 8, "8 lines: 2 variants x 2 modes x 2 seqs, one cinfer kind")
        check(all(line.get("ratio", 0) > 0 for line in lines), "every line has a ratio")
        check(all(line["peer"] == ("torch sdpa" if line["variant"] == "standard"
                                   else "DiffLlama sdpa - proj") for line in lines),
              "standard against torch sdpa, differential against DiffLlama")
    has_gpu = subprocess.run([python, "-c", "import torch; assert torch.cuda.is_available()"],
                             capture_output=True).returncode == 0
    if has_gpu:
        print("skip  the no-GPU message (this machine has one)")
        return
    no_gpu = subprocess.run([python, str(HERE / "bench_attention.py"), "--seq", "16"],
                            capture_output=True, text=True)
    check(no_gpu.returncode == 0 and "no GPU" in no_gpu.stdout,
          "--device cuda without a GPU says so and exits 0")


if __name__ == "__main__":
    test_costs()
    test_merge_and_table()
    default = HERE.parent / "build" / "bench_attention"
    test_end_to_end(sys.argv[1] if len(sys.argv) > 1 else str(default))
    print(f"{len(FAILURES)} failed" if FAILURES else "all passed")
    sys.exit(1 if FAILURES else 0)
