#!/usr/bin/env python3
"""Converts a Hugging Face Llama checkpoint to GGUF with llama.cpp's own convert_hf_to_gguf.py.

    scripts/convert_to_gguf.py MODEL_DIR OUT.gguf [--outtype f32|bf16|f16]

The converter is the one in the llama.cpp tree that scripts/build_llama_server.sh unpacks from the
llama-cpp-python source distribution (build-llama/src/.../vendor/llama.cpp), run with its own
gguf-py, so the GGUF matches the llama-server built from the same tree.

The pre-tokenizer. llama.cpp does not read tokenizer.json's pre-tokenizer: the converter encodes
a fixed test string with the checkpoint's tokenizer, hashes the ids, and looks the hash up in a
table of published checkpoints (get_vocab_base_pre) to name one of the pre-tokenizers llama.cpp
implements in C++ ("llama-bpe", "gpt-2", ...). A tokenizer trained here (models/diffllama-tiny's,
copied by scripts/make_bench_llama.py) has its own merges, so its hash is in no table and the
converter stops with "BPE pre-tokenizer was not recognized". The hash only stands for what
tokenizer.json already says, so where the hash is unknown this reads tokenizer.json itself: if its
pre-tokenizer is exactly Llama 3's (a Split on Llama 3's regex, then ByteLevel without a regex of
its own, no normalizer), it names "llama-bpe", the pre-tokenizer of Meta-Llama-3-8B, whose C++
regex in llama-vocab.cpp is that same regex; anything else still fails as before. (The upstream
way, convert_hf_to_gguf_update.py, downloads every published tokenizer to regenerate the table,
which cannot run offline and would not know this tokenizer anyway.) bench_serving.sh then checks
that both servers count the same prompt tokens.

Runs under <repo>/.venv-fixtures (scripts/fixture_venv.py), adding the converter's few dependencies
(PyYAML, tqdm, requests, sentencepiece) to it if missing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

from fixture_venv import ensure_dependencies  # scripts/fixture_venv.py

SCRIPTS = Path(__file__).resolve().parent
LABEL = "convert_to_gguf"

ensure_dependencies(("torch", "transformers", "numpy"), LABEL)

# gguf-py's own imports and the converter's (llama.cpp's requirements-convert_*.txt), a few MB:
# the Llama converter imports sentencepiece before it looks for a tokenizer.model, and falls back to
# tokenizer.json only when that file is missing
CONVERTER_EXTRAS = {"yaml": "PyYAML", "tqdm": "tqdm", "requests": "requests", "sentencepiece": "sentencepiece"}
missing = [pkg for mod, pkg in CONVERTER_EXTRAS.items() if importlib.util.find_spec(mod) is None]
if missing:
    print(f"[{LABEL}] installing {', '.join(missing)} for llama.cpp's gguf-py", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *missing], check=True)

# Llama 3's pre-tokenizer as tokenizer.json spells it (Meta-Llama-3-8B and every tokenizer trained
# with transformers' Llama 3 recipe, models/diffllama-tiny's included)
LLAMA3_SPLIT_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                      " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def is_llama3_pretokenizer(tokenizer_json: Path) -> bool:
    if not tokenizer_json.is_file():
        return False
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if tok.get("normalizer") is not None or tok.get("model", {}).get("type") != "BPE" or not steps or len(steps) != 2:
        return False
    split, byte_level = steps
    return (split.get("type") == "Split" and split.get("pattern") == {"Regex": LLAMA3_SPLIT_REGEX}
            and split.get("behavior") == "Isolated" and not split.get("invert")
            and byte_level.get("type") == "ByteLevel" and byte_level.get("use_regex") is False)


def llama_source() -> Path:
    out = subprocess.run(["bash", str(SCRIPTS / "build_llama_server.sh"), "--print-src"],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()
    return Path(out[-1])


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--outtype", choices=("f32", "bf16", "f16"), default="f32")
    args = parser.parse_args()

    src = llama_source()
    sys.path.insert(0, str(src / "gguf-py"))
    sys.path.insert(0, str(src))
    import conversion.base  # noqa: E402  (llama.cpp's converter package)

    original = conversion.base.TextModel.get_vocab_base_pre
    model_dir = args.model_dir.resolve()

    llama3 = is_llama3_pretokenizer(model_dir / "tokenizer.json")

    def get_vocab_base_pre(self, tokenizer) -> str:
        # the converter prints a box of warnings before it raises; quiet where the fallback applies
        converter_log = logging.getLogger("hf-to-gguf")
        level = converter_log.level
        if llama3:
            converter_log.setLevel(logging.ERROR)
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not llama3:
                raise
            print(f"[{LABEL}] tokenizer hash not in llama.cpp's table; tokenizer.json's pre-tokenizer is "
                  f"Llama 3's, so tokenizer.ggml.pre = llama-bpe", flush=True)
            return "llama-bpe"
        finally:
            converter_log.setLevel(level)

    conversion.base.TextModel.get_vocab_base_pre = get_vocab_base_pre

    import convert_hf_to_gguf  # noqa: E402
    out = args.out.resolve()
    tmp = out.with_name(out.name + ".tmp")
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(tmp), "--outtype", args.outtype]
    convert_hf_to_gguf.main()
    tmp.replace(out)  # never leave a half-written GGUF under the final name
    print(f"[{LABEL}] wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    main()
