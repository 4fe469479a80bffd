#!/usr/bin/env python3
"""A random-weight Llama checkpoint that both cinfer and llama.cpp's llama-server can serve.

The model that ships with the repository, models/diffllama-tiny, is a DiffLlama, which llama.cpp
does not run. For the serving benchmark (scripts/bench_serving.sh) both servers must run the same
checkpoint, so this writes a plain ``LlamaForCausalLM`` with transformers' own initialisation from
a seed (the weights are noise; with ``ignore_eos`` every request still generates exactly its output
length, which is all a throughput and latency benchmark needs), and copies the tokenizer of
models/diffllama-tiny beside it, so prompts tokenize as real text does (a 4096-token byte-level
BPE with the Llama 3 pre-tokenizer).

Usage
-----
    scripts/make_bench_llama.py                      # tiny: the shape of models/diffllama-tiny
    scripts/make_bench_llama.py --preset 100m        # 99.9M parameters (hidden 768, 12 layers)
    scripts/make_bench_llama.py --preset tiny --layers 4 --out DIR --dtype bfloat16

Default output: build-bench-models/llama-<preset>-<dtype>/ (git-ignored); scripts/bench_serving.sh
converts it for llama.cpp with scripts/convert_to_gguf.py. The chat template
written into tokenizer_config.json is ChatML (the tokenizer has no chat tokens of its own, so its
markers are plain text to both servers alike), since the benchmark uses /v1/chat/completions.

If the running interpreter lacks torch / transformers / safetensors, the script re-runs itself
inside <repo>/.venv-fixtures (scripts/fixture_venv.py), creating it on first use.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from fixture_venv import ensure_dependencies  # scripts/fixture_venv.py

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_SOURCE = REPO_ROOT / "models" / "diffllama-tiny"
OUT_ROOT = REPO_ROOT / "build-bench-models"

# must run before the imports below (it may re-execute this script in .venv-fixtures)
ensure_dependencies(("torch", "transformers", "safetensors"), "make_bench_llama")

# pylint: disable=wrong-import-position
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

# The shape of models/diffllama-tiny/config.json (5.48M parameters as a Llama), and a 99.9M shape
# (intermediate 2816 = 11 x 256, where 2048 would give 78.6M) whose weights (400 MB in f32) no
# longer sit in the CPU caches, so decode is memory-bound as it is for real models. max_position_embeddings: room for the longest benchmark workloads (input +
# output of one request), not the 256 diffllama-tiny was trained at.
PRESETS = {
    "tiny": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                 head_dim=32, intermediate_size=704, max_position_embeddings=2048),
    "100m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                 head_dim=64, intermediate_size=2816, max_position_embeddings=2048),
}

# ChatML as transformers' documentation writes it; cinfer's loaders/chat.c formats it as the
# "chatml" family (it must not contain "You are" or "tools", which would be another variant).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def build_config(args: argparse.Namespace, source_config: dict) -> LlamaConfig:
    shape = dict(PRESETS[args.preset])
    for key, value in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.layers),
                       ("num_attention_heads", args.heads), ("num_key_value_heads", args.kv_heads),
                       ("head_dim", args.head_dim), ("intermediate_size", args.intermediate_size),
                       ("max_position_embeddings", args.max_position_embeddings)):
        if value is not None:
            shape[key] = value
    if args.hidden_size is not None and args.head_dim is None:
        shape["head_dim"] = shape["hidden_size"] // shape["num_attention_heads"]
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        sys.exit(f"error: --heads {shape['num_attention_heads']} is not a multiple of "
                 f"--kv-heads {shape['num_key_value_heads']}")
    vocab = source_config["vocab_size"]
    return LlamaConfig(
        vocab_size=vocab,
        hidden_act="silu",
        rms_norm_eps=source_config.get("rms_norm_eps", 1e-5),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        bos_token_id=source_config["bos_token_id"],
        eos_token_id=source_config["eos_token_id"],
        **shape,
    )


def write_tokenizer(out: Path, max_len: int) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_SOURCE / name, out / name)
    path = out / "tokenizer_config.json"
    tok_config = json.loads(path.read_text())
    tok_config["chat_template"] = CHATML_TEMPLATE
    tok_config["model_max_length"] = max_len
    path.write_text(json.dumps(tok_config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny",
                        help="tiny: models/diffllama-tiny's shape; 100m: ~100M parameters (default tiny)")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--kv-heads", type=int)
    parser.add_argument("--head-dim", type=int, help="default: the preset's, or hidden / heads with --hidden-size")
    parser.add_argument("--intermediate-size", type=int)
    parser.add_argument("--max-position-embeddings", type=int)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="of the safetensors weights (default float32, which both servers compute in "
                             "on the CPU, so neither pays a conversion the other does not)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: build-bench-models/llama-<preset>-<dtype>")
    parser.add_argument("--force", action="store_true", help="rewrite an existing output folder")
    args = parser.parse_args()

    out = (args.out or OUT_ROOT / f"llama-{args.preset}-{args.dtype}").resolve()
    source_config = json.loads((TOKENIZER_SOURCE / "config.json").read_text())
    config = build_config(args, source_config)
    label = "make_bench_llama"

    if (out / "config.json").exists() and not args.force:
        print(f"[{label}] {out} exists (--force rewrites it)", flush=True)
    else:
        torch.set_num_threads(2)
        transformers.logging.set_verbosity_error()
        torch.manual_seed(args.seed)
        dtype = getattr(torch, args.dtype)
        model = LlamaForCausalLM._from_config(config, dtype=dtype)  # transformers' own initialisation
        n_params = sum(p.numel() for p in model.parameters())
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        write_tokenizer(tmp, config.max_position_embeddings)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"[{label}] LlamaForCausalLM, {n_params / 1e6:.2f}M parameters, {args.dtype}, seed {args.seed}, "
              f"hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
              f"{config.num_key_value_heads} KV heads, head_dim {config.head_dim}, intermediate "
              f"{config.intermediate_size}, vocab {config.vocab_size}, max positions "
              f"{config.max_position_embeddings}: {out} ({size / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
