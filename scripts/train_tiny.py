#!/usr/bin/env python3
"""Train the small DiffLlama that ships with cinfer, and pin its greedy output.

What it does, start to end (about 30 minutes on 2 CPU cores):

1. Corpus. The King James Version of the Bible, as Debian's ``bible-kjv-text`` package carries
   it. The package stores the text in its own compressed format, so the script also takes the
   ``bible-kjv`` package (the ``bible`` reader) and runs its binary from the extracted folder:
   ``apt-get download`` and ``dpkg -x`` need no root. Licence: the KJV text is in the public
   domain (Debian's copyright file: "The copyright for the King James Version text of the Bible
   is expired since the translation was done in 1611"); the reader program is GPL-2+, and is
   only run here, never shipped.
   Cleaning: verse numbers and "Book N" chapter headings are dropped, the verses of one chapter
   are joined into one paragraph. Every 40th chapter is held out for validation.
2. Tokenizer. Byte-level BPE trained with the ``tokenizers`` library on the training chapters,
   Llama-3 style: the Llama 3 split regex (Split, isolated), then ByteLevel without its own regex,
   a ByteLevel decoder, ``<|begin_of_text|>`` prepended by a TemplateProcessing post-processor
   and ``<|end_of_text|>`` as eos. Saved through transformers' PreTrainedTokenizerFast.
3. Model. transformers' ``DiffLlamaForCausalLM``: GQA, a few million parameters, tied
   embeddings. Every chapter becomes ``<|begin_of_text|> text <|end_of_text|>``; training takes
   random windows of the concatenated stream. AdamW, linear warmup then cosine decay, fixed
   seed, 2 threads. Saved in bfloat16 (as published checkpoints are) with save_pretrained.
4. Pinning. The saved checkpoint is reloaded in float32 and, for a few prompts, the prompt ids,
   the logits of the last prompt position and transformers' greedy continuation (``generate``,
   ``do_sample=False``, eos ignored) go to ``tests/fixtures/bundled_model/expected.json``;
   tests/test_bundled_model.cpp checks the C engine against it.

Usage
-----
    scripts/train_tiny.py                   # corpus, tokenizer, training, model card, fixture
    scripts/train_tiny.py --steps 50        # a short trial run (writes to --out all the same)
    scripts/train_tiny.py --fixture-only    # only rewrite expected.json from the saved model

If the running interpreter lacks torch / transformers / tokenizers / safetensors, the script
creates ``<repo>/.venv-fixtures`` (the venv scripts/make_fixtures.py uses), installs them there
and re-runs itself with that interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fixture_venv import ensure_dependencies  # scripts/fixture_venv.py

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRED_MODULES = ("torch", "transformers", "tokenizers", "safetensors", "numpy")



# must run before the imports below (it may re-execute this script in .venv-fixtures)
ensure_dependencies(REQUIRED_MODULES, "train_tiny")

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    DiffLlamaConfig,
    DiffLlamaForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
# Llama 3's pre-tokenizer split: contractions, words with one leading non-letter, numbers of at
# most three digits, punctuation runs, newlines, spaces.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS_PACKAGES = ("bible-kjv-text", "bible-kjv")
CORPUS_LICENCE = ("public domain: Debian's /usr/share/doc/bible-kjv-text/copyright says \"The "
                  "copyright for the King James Version text of the Bible is expired since the "
                  "translation was done in 1611\"")
VALIDATION_EVERY = 40  # every 40th chapter is held out: 30 of 1189

# Prompts pinned by the fixture; the first is the one the model card shows. They were picked from
# a longer list for a wide margin between the two best logits all along their greedy paths
# (prompts such as "And God said, Let there be" come within 0.005 of a tie on this model).
PROMPTS = (
    "And the LORD spake unto Moses, saying,",
    "Blessed are the",
    "Let there be light",
)
N_NEW_TOKENS = 64
# The smallest top-2 logit margin a pinned greedy path may have: 50x the 1e-3 logit tolerance the
# tests allow, so that no rounding an engine is allowed can flip a pinned token.
MIN_GREEDY_GAP = 0.05


def log(message: str) -> None:
    print(f"[train_tiny] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# 1. Corpus
# --------------------------------------------------------------------------------------------

def fetch_kjv(cache_dir: Path) -> str:
    """The whole KJV as the `bible` program prints it, from Debian's packages."""
    text_path = cache_dir / "kjv.txt"
    if text_path.exists():
        return text_path.read_text(encoding="ascii")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        tmp_dir = Path(tmp)
        cmd = ["apt-get", "download", *CORPUS_PACKAGES]
        log("$ " + " ".join(cmd))
        if subprocess.run(cmd, cwd=tmp_dir).returncode != 0:
            sys.exit(f"error: `{' '.join(cmd)}` failed: the corpus comes from Debian's "
                     f"{' and '.join(CORPUS_PACKAGES)} packages (run `apt-get update` first)")
        root = tmp_dir / "root"
        for deb in sorted(tmp_dir.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        reader = root / "usr" / "bin" / "bible"
        data_dir = root / "usr" / "lib"
        if not reader.exists() or not (data_dir / "bible.data").exists():
            sys.exit(f"error: {reader} or {data_dir}/bible.data missing after extracting "
                     f"{', '.join(CORPUS_PACKAGES)}")
        # -l with a wide line keeps each verse on one line; the range is the whole book.
        out = subprocess.run([str(reader), "-p", str(data_dir), "-l100000", "Gen1:1-Rev22:21"],
                             check=True, capture_output=True)
        text = out.stdout.decode("ascii")
        text_path.write_text(text, encoding="ascii")
    return text


CHAPTER_HEADING = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]+ \d+$")
VERSE = re.compile(r"^\s+(\d+) (.*)$")


def split_chapters(raw: str) -> list[str]:
    """One paragraph per chapter: headings and verse numbers dropped, verses joined by spaces."""
    chapters: list[list[str]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        if CHAPTER_HEADING.match(line):
            chapters.append([])
            continue
        verse = VERSE.match(line)
        if verse is None or not chapters:
            sys.exit(f"error: kjv.txt: unexpected line {line[:60]!r}: expected a 'Book N' "
                     f"heading or an indented numbered verse")
        chapters[-1].append(" ".join(verse.group(2).split()))
    if len(chapters) != 1189:
        sys.exit(f"error: kjv.txt: found {len(chapters)} chapters, expected the KJV's 1189")
    return [" ".join(verses) for verses in chapters]


# --------------------------------------------------------------------------------------------
# 2. Tokenizer
# --------------------------------------------------------------------------------------------

def train_tokenizer(chapters: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(chapters, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)


# --------------------------------------------------------------------------------------------
# 3. Model and training
# --------------------------------------------------------------------------------------------

def make_config(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> DiffLlamaConfig:
    return DiffLlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=args.context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def token_stream(tokenizer: PreTrainedTokenizerFast, chapters: list[str]) -> torch.Tensor:
    """<|begin_of_text|> chapter <|end_of_text|>, all chapters back to back."""
    ids: list[int] = []
    for encoded in tokenizer(chapters)["input_ids"]:  # BOS comes from the post-processor
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows of `context` tokens (the tail that does not fill one is dropped)."""
    n = (len(stream) // context) * context
    return stream[:n].view(-1, context)


@torch.no_grad()
def mean_loss(model: DiffLlamaForCausalLM, batches: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(batches), batch_size):
        x = batches[start:start + batch_size]
        total += model(input_ids=x, labels=x).loss.item() * len(x)
        count += len(x)
    model.train()
    return total / count


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup to --lr, then cosine decay to a tenth of it at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace, model: DiffLlamaForCausalLM, train_ids: torch.Tensor,
          val_windows: torch.Tensor, train_probe: torch.Tensor) -> dict:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # norms, lambdas
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    generator = torch.Generator().manual_seed(args.seed)
    n_starts = len(train_ids) - args.context
    history = []
    model.train()
    start = time.time()
    running = None
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        offsets = torch.randint(0, n_starts, (args.batch,), generator=generator)
        x = torch.stack([train_ids[o:o + args.context] for o in offsets.tolist()])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        last = step + 1 == args.steps
        if (step + 1) % args.log_every == 0 or last:
            elapsed = time.time() - start
            line = (f"step {step + 1:5d}/{args.steps}  lr {learning_rate(step, args):.2e}  "
                    f"loss {running:.3f}  {elapsed:6.0f} s  "
                    f"{(step + 1) * args.batch * args.context / elapsed:6.0f} tok/s")
            if (step + 1) % args.eval_every == 0 or last:
                val = mean_loss(model, val_windows, args.batch)
                line += f"  val {val:.3f}"
                history.append({"step": step + 1, "seconds": round(elapsed, 1),
                                "train_loss_ema": round(running, 4), "val_loss": round(val, 4)})
            log(line)
    seconds = time.time() - start
    return {
        "seconds": seconds,
        "train_loss": mean_loss(model, train_probe, args.batch),
        "val_loss": mean_loss(model, val_windows, args.batch),
        "history": history,
    }


# --------------------------------------------------------------------------------------------
# 4. Pinning transformers' output
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def write_fixture(model_dir: Path, fixture_path: Path) -> list[dict]:
    """Prompt ids, last-position logits and greedy ids, from the saved checkpoint in float32."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = DiffLlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    records = []
    for text in PROMPTS:
        ids = tokenizer(text)["input_ids"]
        if ids[0] != tokenizer.bos_token_id:
            sys.exit(f"error: {model_dir}/tokenizer.json: '{text}' encodes without "
                     f"{BOS} first: {ids[:4]}")
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, -1].float()
        # eos_token_id=None with an empty stop list: transformers goes on past eos as
        # cinfer's --ignore-eos does.
        gen_config = GenerationConfig(do_sample=False, max_new_tokens=N_NEW_TOKENS,
                                      min_new_tokens=0, eos_token_id=None, pad_token_id=None,
                                      bos_token_id=tokenizer.bos_token_id, output_scores=True,
                                      return_dict_in_generate=True)
        out = model.generate(x, generation_config=gen_config)
        greedy = out.sequences[0, len(ids):].tolist()
        if len(greedy) != N_NEW_TOKENS:
            sys.exit(f"error: generate stopped after {len(greedy)} of {N_NEW_TOKENS} tokens")
        # The smallest margin between the best and second-best logit along the greedy path:
        # cinfer's 1e-3 logit tolerance cannot flip a choice whose margin is well above it.
        gaps = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        if min(gaps) < MIN_GREEDY_GAP:
            sys.exit(f"error: PROMPTS: the greedy path of '{text}' comes within {min(gaps):.4f} of "
                     f"a tie (expected at least {MIN_GREEDY_GAP}); pin another prompt")
        records.append({
            "text": text,
            "input_ids": ids,
            "greedy_ids": greedy,
            "greedy_text": tokenizer.decode(greedy),
            "eos_in_greedy": tokenizer.eos_token_id in greedy,
            "min_greedy_gap": min(gaps),
            "last_logits": [float(v) for v in logits],
        })
        log(f"{text!r} -> {tokenizer.decode(greedy)!r} (min gap {min(gaps):.3f})")
    weights = model_dir / "model.safetensors"
    fixture = {
        "generator": "scripts/train_tiny.py",
        "model": "models/diffllama-tiny",
        "model_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "expected_from": ("the saved bf16 checkpoint reloaded in float32, eager attention; "
                          "last_logits: the logits of the last prompt position; greedy_ids: "
                          "generate(do_sample=False) with eos ignored"),
        "n_new_tokens": N_NEW_TOKENS,
        "prompts": records,
    }
    fixture_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fixture_path.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
    tmp.replace(fixture_path)
    log(f"wrote {fixture_path}")
    return records


def write_model_card(out: Path, args: argparse.Namespace, facts: dict) -> None:
    cmd = "scripts/train_tiny.py" + "".join(f" {a}" for a in sys.argv[1:])
    card = f"""# diffllama-tiny

A demo model for cinfer: a {facts['n_params'] / 1e6:.1f} M-parameter `DiffLlamaForCausalLM`
(Differential-Transformer attention, GQA) trained from scratch with transformers on the CPU,
on the King James Version of the Bible. It writes KJV-flavoured English that is locally fluent
and globally meaningless. It exists so that the repository ships a real trained checkpoint (made
by transformers, saved as published checkpoints are) for the demo and the tests; it is not good
for anything else.

| | |
|---|---|
| corpus | King James Version of the Bible, from Debian's `bible-kjv-text` package (text read out with the `bible` program from `bible-kjv`); verse numbers and chapter headings removed, one paragraph per chapter; {facts['n_train_chapters']} chapters for training, {facts['n_val_chapters']} (every {VALIDATION_EVERY}th) held out |
| corpus licence | {CORPUS_LICENCE} |
| corpus sha256 | `{facts['corpus_sha256']}` (the cleaned text) |
| tokens | {facts['n_train_tokens']:,} training, {facts['n_val_tokens']:,} validation |
| tokenizer | byte-level BPE, {facts['vocab_size']} tokens, trained on the training chapters with `tokenizers`; Llama 3 split regex, ByteLevel, `<|begin_of_text|>` (id {facts['bos_id']}) prepended by the post-processor, `<|end_of_text|>` (id {facts['eos_id']}) ends each chapter; no chat template |
| shape | hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {args.kv_heads} KV heads, head_dim {args.hidden // args.heads}, intermediate {args.intermediate}, context {args.context}, RoPE theta 10000, tied embeddings |
| parameters | {facts['n_params']:,} |
| weights | bfloat16, `model.safetensors` {facts['weights_mb']:.1f} MB |
| training | {args.steps} steps of {args.batch} x {args.context} tokens ({args.steps * args.batch * args.context / facts['n_train_tokens']:.1f} epochs), AdamW (betas 0.9/0.95, weight decay {args.weight_decay}), lr {args.lr} with {args.warmup} warmup steps and cosine decay to a tenth, grad clip 1.0, seed {args.seed}, 2 threads |
| training time | {facts['train_seconds'] / 60:.1f} min on 2 CPU cores (torch {torch.__version__}, transformers {transformers.__version__}) |
| final loss | train {facts['train_loss']:.3f}, validation {facts['val_loss']:.3f} (mean cross-entropy, nats/token, on {facts['n_probe_windows']} training windows and all validation windows of {args.context} tokens, in float32 before the bf16 rounding) |

Greedy continuation (64 tokens, `do_sample=False`, from the bf16 weights in float32):

> **{facts['sample_prompt']}**{facts['sample_text']}

Made by

```
{cmd}
```

which also writes `tests/fixtures/bundled_model/expected.json` (the prompts' ids, the logits of
their last position and transformers' greedy ids) that `tests/test_bundled_model.cpp` checks
cinfer against. Training is seeded, but the bits depend on the torch build and the thread count.
"""
    (out / "README.md").write_text(card, encoding="utf-8")


# --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models" / "diffllama-tiny")
    parser.add_argument("--fixture", type=Path,
                        default=REPO_ROOT / "tests" / "fixtures" / "bundled_model" / "expected.json")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "cinfer-train-tiny",
                        help="where the Debian packages are unpacked and the raw text kept")
    parser.add_argument("--fixture-only", action="store_true",
                        help="do not train: rewrite the fixture from the checkpoint in --out")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=704)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1611)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--eval-every", type=int, default=150)
    args = parser.parse_args()

    if args.fixture_only:
        write_fixture(args.out, args.fixture)
        return
    if args.heads % 2 or args.kv_heads % 2 or args.heads % args.kv_heads:
        sys.exit("error: --heads and --kv-heads: DiffLlama pairs heads, so both must be even "
                 "and --heads a multiple of --kv-heads")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    chapters = split_chapters(fetch_kjv(args.cache_dir))
    cleaned = "\n\n".join(chapters)
    val_chapters = chapters[VALIDATION_EVERY - 1::VALIDATION_EVERY]
    train_chapters = [c for i, c in enumerate(chapters) if (i + 1) % VALIDATION_EVERY]
    log(f"corpus: {len(chapters)} chapters, {len(cleaned):,} characters; "
        f"{len(train_chapters)} train / {len(val_chapters)} validation chapters")

    tokenizer = train_tokenizer(train_chapters, args.vocab)
    train_ids = token_stream(tokenizer, train_chapters)
    val_windows = windows(token_stream(tokenizer, val_chapters), args.context)
    # A fixed sample of training windows, to report the training loss the way the validation
    # loss is measured rather than as a running average over changing weights.
    probe_generator = torch.Generator().manual_seed(args.seed + 1)
    probe_offsets = torch.randint(0, len(train_ids) - args.context, (len(val_windows),),
                                  generator=probe_generator)
    train_probe = torch.stack([train_ids[o:o + args.context] for o in probe_offsets.tolist()])
    log(f"tokens: {len(train_ids):,} train, {val_windows.numel():,} validation "
        f"({len(val_windows)} windows); vocab {len(tokenizer)}")

    config = make_config(args, tokenizer)
    model = DiffLlamaForCausalLM(config)  # sdpa attention for training speed
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters")
    result = train(args, model, train_ids, val_windows, train_probe)
    log(f"trained in {result['seconds'] / 60:.1f} min: train loss {result['train_loss']:.3f}, "
        f"validation loss {result['val_loss']:.3f}")

    # Write into a fresh folder and swap it in, so that a failure leaves the old model whole.
    staging = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               do_sample=False)
    model.save_pretrained(staging)
    tokenizer.model_max_length = args.context
    tokenizer.save_pretrained(staging)
    (staging / "training_log.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    staging.rename(args.out)

    records = write_fixture(args.out, args.fixture)
    write_model_card(args.out, args, {
        "n_params": n_params,
        "n_train_chapters": len(train_chapters),
        "n_val_chapters": len(val_chapters),
        "corpus_sha256": hashlib.sha256(cleaned.encode("ascii")).hexdigest(),
        "n_train_tokens": len(train_ids),
        "n_val_tokens": val_windows.numel(),
        "n_probe_windows": len(train_probe),
        "vocab_size": len(tokenizer),
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "weights_mb": (args.out / "model.safetensors").stat().st_size / 1e6,
        "train_seconds": result["seconds"],
        "train_loss": result["train_loss"],
        "val_loss": result["val_loss"],
        "sample_prompt": records[0]["text"],
        "sample_text": records[0]["greedy_text"],
    })
    total = sum(f.stat().st_size for f in args.out.iterdir())
    log(f"{args.out}: {total / 1e6:.1f} MB in all")


if __name__ == "__main__":
    main()
