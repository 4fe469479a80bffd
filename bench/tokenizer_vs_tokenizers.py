#!/usr/bin/env python3
"""Tokenizer throughput: cinfer's C tokenizer against the `tokenizers` library, in one run.

    bench/tokenizer_vs_tokenizers.py [--mb 1] [--runs 5] [DIR ...]

For each tokenizer folder (default: the committed Llama 3 and Llama 2 style fixtures), writes a
text of --mb megabytes (prose, code, numbers, CJK, emoji: words drawn with a fixed seed from the
fixture script's corpus), then times `build/bench_tokenizer` (best of --runs, one thread) and
tokenizers' encode/decode on the same text in this process (best of --runs; a single encode call
is not parallel), checks that both give the same ids, and prints one table with MB/s and the
ratio. Needs a python with tokenizers (scripts/make_tokenizer_fixtures.py makes one); the engine
itself needs none of this.
"""
import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_text(megabytes: float) -> str:
    # the fixture corpus, without importing the script (it would bootstrap its venv)
    source = (REPO / "scripts" / "make_tokenizer_fixtures.py").read_text()
    start = source.index('TRAINING_TEXT = """') + len('TRAINING_TEXT = """\\\n')
    training = source[start:source.index('"""', start)]
    words = training.split() + ["東京は日本の首都です。", "😀", "👨‍👩‍👧‍👦", "naïve", "123456789",
                                "\n", "\n\n", "    ", "\t", "def", "(x):", "{", "}"]
    rng = random.Random(42)
    out, size = [], 0
    while size < megabytes * 1e6:
        w = rng.choice(words)
        out.append(w)
        size += len(w.encode()) + 1
    return " ".join(out)


def fnv(ids):
    h = 1469598103934665603
    for i in ids:
        h = ((h ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path)
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bench", type=Path, default=REPO / "build" / "bench_tokenizer")
    args = parser.parse_args()
    # one thread for both: a single encode call is serial anyway, this keeps rayon quiet
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer, __version__ as tokenizers_version

    dirs = args.dirs or [REPO / "tests/fixtures/tokenizers" / n
                         for n in ("llama3_bytelevel", "gpt2_bytelevel", "llama2_spm")]
    text = make_text(args.mb)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        path = f.name
    rows = []
    try:
        for d in dirs:
            c = json.loads(subprocess.run([str(args.bench), str(d), path, str(args.runs)],
                                          check=True, capture_output=True, text=True).stdout)
            tok = Tokenizer.from_file(str(d / "tokenizer.json"))
            best_enc = best_dec = float("inf")
            for _ in range(args.runs):
                t0 = time.perf_counter()
                ids = tok.encode(text, add_special_tokens=False).ids
                t1 = time.perf_counter()
                tok.decode(ids, skip_special_tokens=False)
                t2 = time.perf_counter()
                best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
            n = len(text.encode())
            rows.append((d.name, c["tokens"], c["encode_MBps"], n / best_enc / 1e6,
                         c["decode_MBps"], n / best_dec / 1e6,
                         "yes" if fnv(ids) == c["checksum"] and len(ids) == c["tokens"] else "NO"))
    finally:
        os.unlink(path)
    print(f"{len(text.encode()) / 1e6:.2f} MB of text, best of {args.runs}, one thread; "
          f"tokenizers {tokenizers_version}")
    print("| tokenizer | tokens | cinfer encode MB/s | tokenizers encode MB/s | ratio | "
          "cinfer decode MB/s | tokenizers decode MB/s | same ids |")
    print("|---|---:|---:|---:|---:|---:|---:|:---:|")
    for name, tokens, ce, te, cd, td, same in rows:
        print(f"| {name} | {tokens} | {ce:.1f} | {te:.1f} | {ce / te:.2f} | {cd:.1f} | {td:.1f} "
              f"| {same} |")


if __name__ == "__main__":
    main()
