#!/usr/bin/env python3
"""Generate the tokenizer fixtures that cinfer's tokenizer tests compare against.

Each fixture is a small BPE tokenizer trained here with the Hugging Face `tokenizers` library in
one of the layouts that published Llama-family checkpoints use, saved the way transformers saves
it (tokenizer.json, tokenizer_config.json, chat_template.jinja or special_tokens_map.json), plus
`expected.json`: the ids `tokenizers` gives for a corpus of hard strings, with and without special
tokens, and the text it decodes them (and some id lists chosen to stress the decoders) back to.

    scripts/make_tokenizer_fixtures.py            # (re)write tests/fixtures/tokenizers/*

If the running interpreter lacks tokenizers / transformers, the script creates
``<repo>/.venv-fixtures``, installs them there and re-runs itself with that interpreter.

Layouts (one folder each under tests/fixtures/tokenizers/):
  llama3_bytelevel    Split(Llama 3 regex) + ByteLevel(use_regex=false), ignore_merges,
                      <|begin_of_text|> by TemplateProcessing, <|...|> specials
  gpt2_bytelevel      ByteLevel(use_regex=true) pre-tokenizer alone, merges as "a b" strings
  gpt2_prefix_space   the same with add_prefix_space=true, plus lstrip/rstrip/single_word tokens
  llama2_spm          normalizer Prepend("▁")+Replace(" ", "▁"), byte_fallback to <0xNN>,
                      decoder Replace/ByteFallback/Fuse/Strip, <s> template, 4.x-style config
  spm_metaspace       Metaspace pre-tokenizer (prepend_scheme first, split false), byte_fallback
  spm_metaspace_split Metaspace (always, split true) with the Metaspace decoder, <unk>, no
                      byte_fallback, fuse_unk false
"""

from __future__ import annotations

import os
from pathlib import Path

from fixture_venv import ensure_dependencies  # scripts/fixture_venv.py

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "tests" / "fixtures" / "tokenizers"
REQUIRED_MODULES = ("tokenizers", "transformers")



ensure_dependencies(REQUIRED_MODULES, "tokenizer fixtures")

# pylint: disable=wrong-import-position
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import tokenizers  # noqa: E402
import transformers  # noqa: E402
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models,  # noqa: E402
                        normalizers, pre_tokenizers, processors, trainers)
from transformers import PreTrainedTokenizerFast  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
                 "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}")

# What the tokenizers learn from: prose in a few languages, code, numbers. Small on purpose.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a well-known pangram; we'll use it, they've said.
Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Special cases aren't special enough to break the rules.
Although practicality beats purity. Errors should never pass silently, unless explicitly silenced.
In the face of ambiguity, refuse the temptation to guess. Now is better than never.
Les élèves français étudient à l'école; où est la bibliothèque? Ça va très bien, merci.
Die Größe des Gebäudes überrascht. Straße, Mädchen, schön, über, Fußball.
El niño comió piña en la mañana. ¿Dónde está? ¡Qué bueno!
東京は日本の首都です。我喜欢学习中文。
def forward(self, x):\n    return self.norm(x + self.attn(x))\n
for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }
if x == 42 and y != 3.14159: print(f"{x:>8} {y:.3f}")
The year 2024 had 365 days, 8760 hours and 525600 minutes; pi is 3.14159265358979.
Call 555-0123 or email someone@example.com at 10:30am.
    Indented lines, tabs\tand\tnewlines\n\nmatter to tokenizers.
"""


def training_lines() -> list[str]:
    return [line for line in TRAINING_TEXT.splitlines() if line] * 20


# The corpus every fixture is checked on. Special tokens that a fixture does not have are plain
# text to it, which is worth checking too.
HARD_STRINGS = [
    "",
    " ",
    "Hello world",
    "hello world",
    " Hello world",
    "Hello  world   ",
    "   leading and trailing spaces   ",
    "\t\ttabs\tand\nnewlines\n\n\nand\r\ncrlf\r\n",
    "\n",
    " \n \n ",
    "a\u00a0b\u2003c\u3000d",  # no-break, em and ideographic spaces
    "1 12 123 1234 12345 123456789012345678901234567890",
    "3.14159265358979 -42 +7 1e-10 0x1F 1,000,000",
    "I'm sure they'll say it's what we've done; you'd agree, I'M SURE. THEY'LL",
    "The quick brown fox jumps over the lazy dog.",
    "Les élèves français étudient à l'école",
    "Die Größe des Gebäudes überrascht",
    "e\u0301 a\u0300 n\u0303 o\u0308 (combining marks) vs é à ñ ö",
    "東京は日本の首都です。我喜欢学习中文。한국어 텍스트",
    "Ελληνικά και русский язык и العربية و עברית",
    "emoji: 😀 👍🏽 ❤️ 🇫🇷 👨‍👩‍👧‍👦 🧑🏿‍💻",
    "math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ ≈ ∞ ≠ ∅",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}",
    "<s>Hello</s> <s> world </s><unk>",
    "<|begin_of_text|>Hi<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHey<|eot_id|>",
    "text<|endoftext|>more text <|endoftext|> end",
    "<|begin_of_text|><|begin_of_text|>",
    "<|begin_of_text",
    "< s > </ s> <<s>> <s<s>>",
    "<0x41> <0xFF> \\xff\\xfe \ufffd \ufffd\ufffd",
    "unknown chars: \u0378 \U0010fffd \U0001f9ff \u2603 \u00ad",
    "    ",
    "a" * 300,
    "!!!???...,,,;;;:::---___===+++",
    "mask: the <mask> is here <mask>and<mask> there",
    "special words: [INST] hello [/INST] [INST]x[/INST]",
    "<extra>inside</extra> <extra> spaced <extra>",
    "\u2581leading meta \u2581\u2581double \u2581",
]


def long_paragraph() -> str:
    rng = random.Random(1234)
    words = TRAINING_TEXT.split() + ["supercalifragilistic", "Ω", "naïve", "🙂", "1234567"]
    return " ".join(rng.choice(words) for _ in range(400))


def save(tok: Tokenizer, out: Path, *, config: dict, chat_template: str | None = None,
         legacy_config: dict | None = None) -> None:
    """Writes tokenizer.json and the config files as transformers' save_pretrained does."""
    with tempfile.TemporaryDirectory() as tmp:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=chat_template,
                                       **config)
        fast.save_pretrained(tmp)
        for name in os.listdir(tmp):
            shutil.copy(Path(tmp) / name, out / name)
    # transformers rewrites nothing in tokenizer.json, but save the one we trained, to be sure
    tok.save(str(out / "tokenizer.json"))
    if legacy_config is not None:
        # the transformers 4.x layout: chat_template inside tokenizer_config.json, token strings
        # as AddedToken dicts, special_tokens_map.json beside it
        (out / "chat_template.jinja").unlink(missing_ok=True)
        (out / "tokenizer_config.json").write_text(json.dumps(legacy_config, indent=2,
                                                              ensure_ascii=False) + "\n")
        special = {k: legacy_config[k] for k in ("bos_token", "eos_token", "unk_token")
                   if k in legacy_config}
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def bytelevel_trainer(vocab_size: int, specials: list[str]) -> trainers.BpeTrainer:
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                               show_progress=False)


def make_llama3(out: Path) -> Tokenizer:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"]
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_lines(), bytelevel_trainer(900, []))
    # Llama 3 puts its specials after the model vocabulary
    tok.add_special_tokens(specials)
    bos = specials[0]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    save(tok, out, config=dict(bos_token=bos, eos_token="<|eot_id|>"),
         chat_template=CHAT_TEMPLATE)
    return tok


def make_gpt2(out: Path, prefix_space: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.train_from_iterator(training_lines(), bytelevel_trainer(700, ["<|endoftext|>"]))
    if prefix_space:
        # the flags added tokens can carry, as BERT/RoBERTa-style <mask> and [INST] use them
        tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=False),
                                AddedToken("[INST]", rstrip=True),
                                AddedToken("[/INST]", lstrip=True, rstrip=True)])
        tok.add_tokens([AddedToken("<extra>", single_word=True, normalized=False),
                        AddedToken("fox jumps", normalized=True)])
    save(tok, out, config=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>"))
    if not prefix_space:
        # older tokenizer.json files spell merges as "a b" strings
        data = json.loads((out / "tokenizer.json").read_text())
        data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
        (out / "tokenizer.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    return tok


def spm_with_byte_tokens(tok: Tokenizer, specials: list[str], byte_fallback: bool) -> dict:
    """The trained model with Llama 2's vocabulary order: specials, <0x00>..<0xFF>, the rest."""
    data = json.loads(tok.to_str())
    trained = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
    vocab = {s: i for i, s in enumerate(specials)}
    if byte_fallback:
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in trained:
        if piece not in vocab:
            vocab[piece] = len(vocab)
    data["model"]["vocab"] = vocab
    data["added_tokens"] = [
        dict(id=vocab[s], content=s, single_word=False, lstrip=False, rstrip=False,
             normalized=False, special=True) for s in specials]
    return data


def make_spm(out: Path, layout: str) -> Tokenizer:
    specials = ["<unk>", "<s>", "</s>"]
    byte_fallback = layout != "metaspace_split"
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=byte_fallback,
                               fuse_unk=byte_fallback))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                 split=True)
    tok.train_from_iterator(training_lines(), trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, show_progress=False))
    data = spm_with_byte_tokens(tok, specials, byte_fallback)
    data["model"]["ignore_merges"] = False
    tok = Tokenizer.from_str(json.dumps(data))
    spm_decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if layout == "legacy":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
        tok.pre_tokenizer = None
        tok.decoder = spm_decoder
    elif layout == "metaspace":
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                     split=False)
        tok.decoder = spm_decoder
        tok.add_tokens([AddedToken("[INST]", normalized=False),
                        AddedToken("[/INST]", normalized=False)])
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                     split=True)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always",
                                         split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)])
    config = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    legacy = None
    if layout == "legacy":
        def added(content):
            return {"__type": "AddedToken", "content": content, "lstrip": False,
                    "normalized": False, "rstrip": False, "single_word": False}
        legacy = {
            "add_bos_token": True, "add_eos_token": False,
            "added_tokens_decoder": {str(i): dict(added(s), special=True)
                                     for i, s in enumerate(specials)},
            "bos_token": added("<s>"), "eos_token": added("</s>"), "unk_token": added("<unk>"),
            "chat_template": [
                {"name": "default", "template": "{{ bos_token }}{{ messages[0]['content'] }}"},
                {"name": "tool_use", "template": "{{ tools }}"}],
            "clean_up_tokenization_spaces": False, "legacy": True,
            "model_max_length": 4096, "tokenizer_class": "LlamaTokenizer",
        }
    save(tok, out, config=config, legacy_config=legacy)
    return tok


FIXTURES = {
    "llama3_bytelevel": make_llama3,
    "gpt2_bytelevel": lambda out: make_gpt2(out, prefix_space=False),
    "gpt2_prefix_space": lambda out: make_gpt2(out, prefix_space=True),
    "llama2_spm": lambda out: make_spm(out, "legacy"),
    "spm_metaspace": lambda out: make_spm(out, "metaspace"),
    "spm_metaspace_split": lambda out: make_spm(out, "metaspace_split"),
}


def decode_stress_ids(tok: Tokenizer, rng: random.Random) -> list[list[int]]:
    """Id lists the corpus never produces: lone bytes of multi-byte characters, random ids."""
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    lists = []
    pieces = [p for p in ("<0xE2>", "<0x82>", "<0xAC>", "<0xFF>", "\u00e2", "\u0124", "\u00ac",
                          "\u0142", "<s>", "</s>", "\u2581", "\u2581\u2581", " ", "a")
              if tok.token_to_id(p) is not None]
    ids = [tok.token_to_id(p) for p in pieces]
    for _ in range(12):
        lists.append([rng.choice(ids) for _ in range(rng.randint(1, 8))])
    for _ in range(12):
        lists.append([rng.randrange(vocab_size) for _ in range(rng.randint(1, 24))])
    return lists


def main() -> None:
    rng = random.Random(20240601)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    strings = HARD_STRINGS + [long_paragraph()]
    for name, make in FIXTURES.items():
        out = OUT_DIR / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        tok = make(out)
        # what the C side must match is the tokenizer as saved, read back
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        fast = transformers.AutoTokenizer.from_pretrained(str(out))
        cases, differs = [], []
        for text in strings:
            with_special = tok.encode(text, add_special_tokens=True).ids
            plain = tok.encode(text, add_special_tokens=False).ids
            case = dict(text=text, ids=with_special, ids_no_special=plain,
                        decoded=tok.decode(with_special, skip_special_tokens=False),
                        decoded_skip_special=tok.decode(with_special, skip_special_tokens=True))
            # transformers 5's LlamaTokenizer class rebuilds the pipeline instead of reading
            # tokenizer.json's legacy normalizer: note where its ids differ (cinfer follows
            # tokenizer.json, as the tokenizers library does)
            hf = fast(text, add_special_tokens=True)["input_ids"]
            if hf != with_special:
                case["ids_transformers"] = hf
                differs.append(text)
            cases.append(case)
        decodes = [dict(ids=ids, decoded=tok.decode(ids, skip_special_tokens=False),
                        decoded_skip_special=tok.decode(ids, skip_special_tokens=True))
                   for ids in decode_stress_ids(tok, rng)]
        expected = dict(
            generator="scripts/make_tokenizer_fixtures.py",
            tokenizers_version=tokenizers.__version__,
            transformers_version=transformers.__version__,
            vocab_size=tok.get_vocab_size(with_added_tokens=True),
            bos_token=fast.bos_token, eos_token=fast.eos_token,
            transformers_class=type(fast).__name__,
            encode=cases, decode=decodes)
        (out / "expected.json").write_text(json.dumps(expected, ensure_ascii=False, indent=1)
                                           + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"[tokenizer fixtures] {name}: vocab {expected['vocab_size']}, "
              f"{len(cases)} strings, {len(decodes)} id lists, {size // 1024} KiB")
        if differs:
            print(f"[tokenizer fixtures] {name}: transformers' {type(fast).__name__} gives other "
                  f"ids than tokenizer.json for {len(differs)} strings (kept as ids_transformers)")


if __name__ == "__main__":
    main()
