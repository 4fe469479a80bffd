#!/usr/bin/env python3
"""The table of scripts/bench_serving.sh: GuideLLM's JSON reports of each server, side by side.

    bench_serving_report.py --out DIR --input-len N --output-len M --run NAME=guidellm.json [--run ...]

Writes DIR/table.md (also printed), DIR/results.json and DIR/results.csv: one row per server and
concurrency, then cinfer/llama ratio rows where both ran. The figures are GuideLLM's own, under its
own names (guidellm/schemas/base/request_stats.py), over the requests it measured (warm-up ones
left out):
  TTFT  first streamed token - request sent
  TPOT  (last token - request sent) / output tokens: the first token's wait spread over all tokens
  ITL   (last token - first token) / (output tokens - 1): what vLLM calls TPOT and aiperf calls ITL;
        GuideLLM keeps no time per gap, so this is each request's mean gap, not vLLM's per-gap ITL
  req/s, out tok/s  completed requests and their output tokens per second of the measured window
p50/p99 are over requests (each weighted by its tokens, equal here: every request has the same
output length). Checks printed under the table: errors, requests that did not produce exactly
--output-len tokens (a server ignoring ignore_eos or max_completion_tokens), and servers that
counted different prompt tokens for the same prompts (different tokenization or chat template).
Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

# (column, GuideLLM metric, percentile)
LATENCIES = (("ttft_p50_ms", "time_to_first_token_ms", "p50"), ("ttft_p99_ms", "time_to_first_token_ms", "p99"),
             ("tpot_p50_ms", "time_per_output_token_ms", "p50"), ("tpot_p99_ms", "time_per_output_token_ms", "p99"),
             ("itl_p50_ms", "inter_token_latency_ms", "p50"), ("itl_p99_ms", "inter_token_latency_ms", "p99"))
RATES = (("req_per_s", "requests_per_second"), ("output_tok_per_s", "output_tokens_per_second"))
COLUMNS = ["server", "concurrency", "requests", "errored", "prompt_tokens_mean", "output_tokens_mean",
           *[c for c, _, _ in LATENCIES], *[c for c, _ in RATES]]
HEADERS = {"server": "server", "concurrency": "conc", "requests": "n", "errored": "err",
           "prompt_tokens_mean": "prompt tok", "output_tokens_mean": "out tok",
           "ttft_p50_ms": "TTFT p50 ms", "ttft_p99_ms": "TTFT p99 ms", "tpot_p50_ms": "TPOT p50 ms",
           "tpot_p99_ms": "TPOT p99 ms", "itl_p50_ms": "ITL p50 ms", "itl_p99_ms": "ITL p99 ms",
           "req_per_s": "req/s", "output_tok_per_s": "out tok/s"}
RATIO_COLUMNS = [c for c, _, _ in LATENCIES] + [c for c, _ in RATES]


def rows_of(name: str, path: Path) -> list[dict]:
    report = json.loads(path.read_text())
    rows = []
    for bench in report["benchmarks"]:
        metrics = bench["metrics"]
        strategy = bench["config"]["strategy"]
        row = {"server": name, "concurrency": strategy.get("streams") or strategy.get("max_concurrency"),
               "requests": metrics["request_totals"]["successful"],
               "errored": metrics["request_totals"]["errored"] + metrics["request_totals"]["incomplete"],
               "prompt_tokens_mean": metrics["prompt_token_count"]["successful"]["mean"],
               "output_tokens_mean": metrics["output_token_count"]["successful"]["mean"]}
        for column, metric, pct in LATENCIES:
            row[column] = metrics[metric]["successful"]["percentiles"][pct]
        for column, metric in RATES:
            row[column] = metrics[metric]["successful"]["mean"]
        rows.append(row)
    return sorted(rows, key=lambda r: r["concurrency"])


def fmt(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--input-len", type=int, required=True)
    parser.add_argument("--output-len", type=int, required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=JSON")
    args = parser.parse_args()

    rows, checks = [], []
    for run in args.run:
        name, _, path = run.partition("=")
        rows += rows_of(name, Path(path))

    by_key = {(r["server"], r["concurrency"]): r for r in rows}
    ratios = []
    for row in rows:
        if row["server"] != "cinfer" or ("llama", row["concurrency"]) not in by_key:
            continue
        peer = by_key[("llama", row["concurrency"])]
        ratio = {"server": "cinfer/llama", "concurrency": row["concurrency"]}
        for column in RATIO_COLUMNS:
            ratio[column] = row[column] / peer[column] if peer[column] else None
        ratios.append(ratio)
        if abs(row["prompt_tokens_mean"] - peer["prompt_tokens_mean"]) > 0.5:
            checks.append(f"concurrency {row['concurrency']}: cinfer counted {row['prompt_tokens_mean']:.1f} prompt "
                          f"tokens per request, llama-server {peer['prompt_tokens_mean']:.1f} (tokenizer or chat "
                          f"template differ)")
    for row in rows:
        where = f"{row['server']} at concurrency {row['concurrency']}"
        if row["errored"]:
            checks.append(f"{where}: {row['errored']} requests failed or were cut off (client.log)")
        if abs(row["output_tokens_mean"] - args.output_len) > 1e-6:
            checks.append(f"{where}: {row['output_tokens_mean']:.2f} output tokens per request, asked "
                          f"{args.output_len} (ignore_eos / max_completion_tokens not honoured?)")
        if row["requests"] == 0:
            checks.append(f"{where}: no request completed")

    lines = ["| " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
             "|" + "|".join("---" if c == "server" else "---:" for c in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
    for ratio in ratios:
        cells = [f"{fmt(ratio[c])}x" if c in RATIO_COLUMNS and ratio.get(c) is not None else
                 fmt(ratio.get(c, "")) if c in ("server", "concurrency") else "" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"input {args.input_len} tokens (before the chat template), output {args.output_len} tokens, "
             f"ignore_eos; TTFT, TPOT and ITL as GuideLLM defines them (scripts/bench_serving_report.py); "
             f"ratios are cinfer / llama-server: below 1 is faster for latencies, above 1 is more for rates."]
    notes += [f"CHECK: {c}" for c in checks]
    table = "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(
        {"input_len": args.input_len, "output_len": args.output_len, "rows": rows, "ratios": ratios,
         "checks": checks}, indent=2) + "\n")
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)  # quotes fields as RFC 4180 asks
        writer.writeheader()
        for row in rows + ratios:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    sys.stdout.write(table)
    if checks:
        sys.exit(1)


if __name__ == "__main__":
    main()
