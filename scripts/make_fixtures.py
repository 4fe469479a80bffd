#!/usr/bin/env python3
"""Generate the reference fixtures that cinfer's tests compare against.

Every fixture is a tiny random-weight checkpoint written by Hugging Face
transformers itself (``LlamaForCausalLM`` / ``DiffLlamaForCausalLM``), so the C
engine is tested against the real thing rather than against a re-implementation.

Usage
-----
    scripts/make_fixtures.py                # (re)write every fixture under tests/fixtures/
    scripts/make_fixtures.py NAME [NAME..]  # only the named fixtures
    scripts/make_fixtures.py --big OUTDIR   # a ~1.2B-parameter bf16 DiffLlama for benchmarks
                                            # (random weights, no expected outputs, not committed)

If the running interpreter lacks torch / transformers / safetensors / numpy,
the script creates ``<repo>/.venv-fixtures``, installs them there and re-runs
itself with that interpreter.

Output layout
-------------
``tests/fixtures/<name>/`` holds exactly what ``save_pretrained`` writes
(config.json, generation_config.json, model.safetensors or shards plus
model.safetensors.index.json) and ``expected.safetensors`` with, for every
prompt i:

    prompt{i}.input_ids  I64 [T]
    prompt{i}.logits     F32 [T, vocab]      one full forward pass, no cache
    prompt{i}.hidden     F32 [L+2, T, E]     0 = embed_tokens output,
                                             1..L = output of decoder layer 0..L-1,
                                             L+1 = output of the final norm
    prompt{i}.greedy     I64 [16]            greedy continuation using the KV cache

and string metadata (transformers_version, torch_version, generator,
n_prompts, n_greedy, checkpoint_dtype, expected_from, min_greedy_gap,
description).

All expected outputs are computed in float32 with the eager attention path,
from the checkpoint as reloaded by ``from_pretrained`` (for bf16/fp16 fixtures:
from the float32 upcast of the rounded weights).
"""

from __future__ import annotations

from pathlib import Path

from fixture_venv import ensure_dependencies  # scripts/fixture_venv.py

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
REQUIRED_MODULES = ("torch", "transformers", "safetensors", "numpy")


# must run before the imports below (it may re-execute this script in .venv-fixtures)
ensure_dependencies(REQUIRED_MODULES, "make_fixtures")

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import struct  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (  # noqa: E402
    DiffLlamaConfig,
    DiffLlamaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

N_GREEDY = 16             # tokens generated per prompt
MIN_GAP = 1e-3            # smallest acceptable top1-top2 logit gap during greedy decoding
MAX_PROMPT_ATTEMPTS = 50  # redraws of a prompt before giving up
DEFAULT_PROMPT_LENGTHS = (1, 5, 17)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "diffllama": (DiffLlamaConfig, DiffLlamaForCausalLM),
}

# The dimensions every fixture shares (then overridden per fixture).
COMMON_CONFIG = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
    tie_word_embeddings=False,
)
LAYERS = {"llama": 2, "diffllama": 3}

# llama3 RoPE used by two fixtures. The bands are split at wavelengths 32/4 = 8 and 32/1 = 32.
# head_dim 12, theta 1e4: wavelengths 6.3 (kept), 29.2 (smoothed), 190, 1083, ... (divided by 8);
# head_dim 16: 6.3 (kept), 19.9 (smoothed), 62.8, 199, ... (divided by 8). All three bands are hit.
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0,
                   low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


@dataclass
class Fixture:
    name: str
    arch: str                                   # "llama" or "diffllama"
    description: str
    config: dict[str, Any]                      # overrides of COMMON_CONFIG
    dtype: str = "float32"                      # dtype of the stored checkpoint
    prompt_lengths: tuple[int, ...] = DEFAULT_PROMPT_LENGTHS
    # Rewrite config.json into the transformers-4.x layout; the value is the key that
    # names the RoPE type inside "rope_scaling" ("rope_type", or its older alias "type").
    legacy_rope_key: str | None = None
    max_shard_size: str | None = None           # None: save_pretrained's default (one file)
    min_shards: int = 1


def rope(rope_type: str = "default", theta: float = 10000.0, **params: Any) -> dict[str, Any]:
    """A transformers-5 ``rope_parameters`` dict."""
    return dict(rope_type=rope_type, rope_theta=theta, **params)


FIXTURES = [
    Fixture("llama_mha", "llama",
            "Llama MHA (H=4, G=4, D=16), SiLU, default RoPE, untied lm_head, no biases, fp32",
            dict(num_attention_heads=4, num_key_value_heads=4, rope_parameters=rope())),
    Fixture("llama_gqa_llama3", "llama",
            "Llama GQA (H=8, G=2) with explicit head_dim 12 != E/H, tied embeddings, attention+MLP "
            "biases, llama3 RoPE hitting all three bands, legacy 4.x config.json (rope_scaling/rope_theta/"
            "torch_dtype), fp32",
            dict(num_attention_heads=8, num_key_value_heads=2, head_dim=12, tie_word_embeddings=True,
                 max_position_embeddings=256, attention_bias=True, mlp_bias=True,
                 rope_parameters=dict(LLAMA3_ROPE)),
            legacy_rope_key="rope_type"),
    Fixture("llama_gelutanh_linear", "llama",
            "Llama GQA (H=4, G=2), gelu_pytorch_tanh MLP, linear RoPE scaling factor 4, fp32",
            dict(num_attention_heads=4, num_key_value_heads=2, hidden_act="gelu_pytorch_tanh",
                 rope_parameters=rope("linear", factor=4.0))),
    Fixture("llama_gelu_dynamic", "llama",
            "Llama MHA (H=4, G=4), exact-erf gelu MLP, dynamic NTK RoPE factor 2 with "
            "max_position_embeddings 16: the 24-token prompt and greedy steps past position 16 use "
            "the rescaled base, fp32",
            dict(num_attention_heads=4, num_key_value_heads=4, hidden_act="gelu",
                 max_position_embeddings=16, rope_parameters=rope("dynamic", factor=2.0)),
            prompt_lengths=(1, 9, 24)),
    Fixture("llama_yarn", "llama",
            "Llama GQA (H=4, G=2), YaRN RoPE factor 4 from 16 to 64 positions (attention_factor != 1), "
            "legacy 4.x config.json with rope_scaling {'type': 'yarn'} and no head_dim key, fp32",
            dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 rope_parameters=rope("yarn", factor=4.0, original_max_position_embeddings=16)),
            legacy_rope_key="type"),
    Fixture("diffllama_mha", "diffllama",
            "DiffLlama differential attention, H=4, G=4, D=16, default RoPE, rms_norm_eps 1e-5, fp32",
            dict(num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
                 rope_parameters=rope())),
    Fixture("diffllama_gqa2_llama3", "diffllama",
            "DiffLlama GQA (H=8, G=4) with explicit head_dim 16 != E/H, llama3 RoPE, fp32",
            dict(num_attention_heads=8, num_key_value_heads=4, head_dim=16,
                 rope_parameters=dict(LLAMA3_ROPE))),
    Fixture("diffllama_gqa4", "diffllama",
            "DiffLlama GQA (H=8, G=2, D=8), attention biases, tied embeddings, fp32",
            dict(num_attention_heads=8, num_key_value_heads=2, attention_bias=True,
                 tie_word_embeddings=True, rope_parameters=rope())),
    Fixture("diffllama_gqa8", "diffllama",
            "DiffLlama GQA (H=16, G=2, D=4: 8 query heads per KV head, group-norm width 8), fp32",
            dict(num_attention_heads=16, num_key_value_heads=2, rope_parameters=rope())),
    Fixture("llama_bf16_sharded", "llama",
            "Llama GQA (H=4, G=2), bf16 checkpoint split into >= 3 safetensors shards with "
            "model.safetensors.index.json; expected outputs from the fp32 upcast",
            dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope()),
            dtype="bfloat16", max_shard_size="40KB", min_shards=3),
    Fixture("diffllama_fp16", "diffllama",
            "DiffLlama GQA (H=4, G=2), fp16 checkpoint; expected outputs from the fp32 upcast",
            dict(num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope()),
            dtype="float16"),
]


# --------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------

def build_config(fx: Fixture):
    config_cls, _ = ARCHS[fx.arch]
    kwargs = {**COMMON_CONFIG, "num_hidden_layers": LAYERS[fx.arch], **copy.deepcopy(fx.config)}
    return config_cls(**kwargs)


@torch.no_grad()
def reinit_weights(model: nn.Module) -> None:
    """Re-initialise every parameter so that activations and logits are O(1).

    HF's default init (std 0.02) gives near-zero logits, which would make a 1e-3
    logits tolerance meaningless and the greedy argmax fragile. Any parameter this
    function does not recognise is an error, so nothing keeps its default init.
    """
    seen: set[int] = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # tied lm_head: already initialised as the embedding
                continue
            seen.add(id(param))
            if isinstance(module, nn.Embedding):
                param.normal_(0.0, 1.0)
            elif isinstance(module, nn.Linear) and pname == "weight":
                param.normal_(0.0, module.in_features ** -0.5)
            elif isinstance(module, nn.Linear) and pname == "bias":
                param.normal_(0.0, 0.1)
            elif type(module).__name__.endswith("RMSNorm") and pname == "weight":
                param.normal_(1.0, 0.1)
            elif pname in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                param.normal_(0.0, 0.2)
            else:
                raise RuntimeError(f"no init rule for {type(module).__name__}.{pname}")
    n_unique = len({id(p) for p in model.parameters()})
    assert len(seen) == n_unique, (len(seen), n_unique)


def load_fp32(folder: Path, arch: str) -> nn.Module:
    """A freshly loaded model, float32, eager attention.

    Called anew for every computation: dynamic RoPE keeps state in the rotary module
    (max_seq_len_cached), so a shared model would make results depend on call order.
    """
    _, model_cls = ARCHS[arch]
    model = model_cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.config._attn_implementation == "eager"
    return model


# --------------------------------------------------------------------------
# Checkpoint post-processing and checks
# --------------------------------------------------------------------------

def rewrite_config_legacy(folder: Path, rope_key: str) -> None:
    """Turn the config.json transformers 5 writes into the transformers-4.x layout.

    v5:  "rope_parameters": {"rope_type": ..., "rope_theta": ..., ...}, "dtype": ...
    4.x: "rope_theta": ..., "rope_scaling": {<rope_key>: ..., ...}, "torch_dtype": ...,
         and no "head_dim" when it is the default E/H
    """
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rope_params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope_params.pop("rope_theta")
    cfg["rope_scaling"] = {rope_key: rope_params.pop("rope_type"), **rope_params}
    cfg["torch_dtype"] = cfg.pop("dtype")
    # transformers 5 always writes head_dim; older configs omit it when it equals E/H,
    # which makes the loader derive it.
    if cfg["head_dim"] == cfg["hidden_size"] // cfg["num_attention_heads"]:
        del cfg["head_dim"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file, read the way the C loader reads it."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def check_checkpoint_files(fx: Fixture, folder: Path, model: nn.Module) -> list[Path]:
    """Check the weight files hold the intended dtype, sharding and tensor names."""
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = sorted({folder / f for f in weight_map.values()})
    else:
        files = [folder / "model.safetensors"]
    if len(files) < fx.min_shards:
        raise RuntimeError(f"{fx.name}: expected >= {fx.min_shards} shards, got {len(files)}")
    if fx.min_shards > 1 and not index_path.exists():
        raise RuntimeError(f"{fx.name}: model.safetensors.index.json missing")

    want = SAFETENSORS_DTYPE[fx.dtype]
    names = set()
    for f in files:
        for name, entry in safetensors_header(f).items():
            if name == "__metadata__":
                continue
            names.add(name)
            if entry["dtype"] != want:
                raise RuntimeError(f"{f}: {name} is {entry['dtype']}, expected {want}")

    expected_names = set(model.state_dict().keys())
    if model.config.tie_word_embeddings:
        expected_names.discard("lm_head.weight")  # tied: only the embedding is stored
    if names != expected_names:
        raise RuntimeError(f"{fx.name}: stored tensors differ: "
                           f"extra {sorted(names - expected_names)}, missing {sorted(expected_names - names)}")
    return files


def check_reload(fx: Fixture, folder: Path, reference: nn.Module) -> None:
    """The reloaded checkpoint must equal the in-memory model: weights, RoPE, logits."""
    loaded = load_fp32(folder, fx.arch)
    ref_sd, new_sd = reference.state_dict(), loaded.state_dict()
    assert ref_sd.keys() == new_sd.keys()
    for name, tensor in ref_sd.items():
        if not torch.equal(tensor, new_sd[name]):
            raise RuntimeError(f"{fx.name}: {name} changed on reload")

    # RoPE settings survive the (possibly legacy) config.json. A legacy "type" key is kept
    # by transformers next to the "rope_type" it derives from it; ignore that duplicate.
    def rope_settings(model):
        return {k: v for k, v in model.config.rope_parameters.items() if k != "type"}
    assert rope_settings(loaded) == rope_settings(reference), (rope_settings(loaded), rope_settings(reference))
    ref_rope, new_rope = reference.model.rotary_emb, loaded.model.rotary_emb
    assert torch.equal(ref_rope.inv_freq, new_rope.inv_freq)
    assert ref_rope.attention_scaling == new_rope.attention_scaling

    # Same logits on a probe shorter than max_position_embeddings (leaves dynamic RoPE alone).
    probe = torch.arange(3, 11)[None]
    with torch.no_grad():
        a = reference(input_ids=probe, use_cache=False).logits
        b = loaded(input_ids=probe, use_cache=False).logits
    if not torch.allclose(a, b, atol=1e-6, rtol=0):
        raise RuntimeError(f"{fx.name}: reloaded model gives different logits "
                           f"(max diff {(a - b).abs().max().item():.3g})")


# --------------------------------------------------------------------------
# Expected outputs
# --------------------------------------------------------------------------

def draw_prompt(fx: Fixture, index: int, attempt: int, vocab: int) -> torch.Tensor:
    """Deterministic uniform token ids; a new attempt gives a new draw."""
    seed = zlib.crc32(f"{fx.name}/prompt{index}/attempt{attempt}".encode())
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (fx.prompt_lengths[index],), generator=gen, dtype=torch.int64)


@torch.no_grad()
def full_pass(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [T, V] and hidden states [L+2, T, E] of one cache-less forward pass."""
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        # Decoder layers return a tensor in transformers 5 and a tuple in 4.x.
        out = output[0] if isinstance(output, tuple) else output
        captured.append(out.detach()[0].clone())

    inner = model.model
    modules = [inner.embed_tokens, *inner.layers, inner.norm]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        logits = model(input_ids=ids[None], use_cache=False).logits[0]
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == len(modules), "a hooked module ran more or less than once"
    hidden = torch.stack(captured)

    # Internal consistency: logits are lm_head(final norm output).
    recomputed = model.lm_head(hidden[-1])
    assert torch.allclose(recomputed, logits, atol=1e-5, rtol=0)
    return logits.float().contiguous(), hidden.float().contiguous()


@torch.no_grad()
def greedy(model: nn.Module, ids: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Greedy decoding with the KV cache, never stopping at eos.

    Returns the tokens, the smallest top1-top2 logit gap over all steps, and the
    logits of the first (whole-prompt) call's last position.
    """
    out = model(input_ids=ids[None], use_cache=True)
    first_logits = out.logits[0, -1].clone()
    tokens: list[int] = []
    min_gap = float("inf")
    for step in range(n_tokens):
        last = out.logits[0, -1]
        top2 = torch.topk(last, 2).values
        min_gap = min(min_gap, (top2[0] - top2[1]).item())
        token = int(torch.argmax(last))
        tokens.append(token)
        if step + 1 == n_tokens:
            break
        out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return torch.tensor(tokens, dtype=torch.int64), min_gap, first_logits


def expected_for_prompt(fx: Fixture, folder: Path, index: int, vocab: int):
    """Draw prompt `index` (redrawing while greedy is ambiguous) and compute its outputs."""
    for attempt in range(MAX_PROMPT_ATTEMPTS):
        ids = draw_prompt(fx, index, attempt, vocab)
        tokens, gap, first_logits = greedy(load_fp32(folder, fx.arch), ids, N_GREEDY)
        if gap < MIN_GAP:
            print(f"    prompt{index}: greedy gap {gap:.2e} < {MIN_GAP}, redrawing", flush=True)
            continue
        logits, hidden = full_pass(load_fp32(folder, fx.arch), ids)
        # The cached path's first step must agree with the cache-less pass.
        assert torch.allclose(first_logits, logits[-1], atol=1e-4, rtol=0)
        return ids, logits, hidden, tokens, gap
    raise RuntimeError(f"{fx.name}: no prompt{index} with greedy gap >= {MIN_GAP} "
                       f"after {MAX_PROMPT_ATTEMPTS} attempts")


def sort_metadata_in_place(path: Path) -> None:
    """Make a .safetensors file byte-reproducible by sorting its __metadata__ keys.

    safetensors serialises __metadata__ from a hash map, so its key order changes
    from run to run. Sorting keeps the header's length (same keys and values), so
    only the header bytes are rewritten and the data offsets stay valid.
    """
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        new = new.ljust(n, b" ")  # safetensors pads the header with spaces
        assert len(new) == n, "header length changed"
        f.seek(8)
        f.write(new)


def check_expected_file(path: Path, fx: Fixture, config) -> None:
    """Re-open expected.safetensors and check names, dtypes and shapes."""
    n_layers, vocab, hidden = config.num_hidden_layers, config.vocab_size, config.hidden_size
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        assert int(meta["n_prompts"]) == len(fx.prompt_lengths)
        assert set(f.keys()) == {f"prompt{i}.{k}" for i in range(len(fx.prompt_lengths))
                                 for k in ("input_ids", "logits", "hidden", "greedy")}
        for i, t in enumerate(fx.prompt_lengths):
            shapes = {"input_ids": ((t,), torch.int64),
                      "logits": ((t, vocab), torch.float32),
                      "hidden": ((n_layers + 2, t, hidden), torch.float32),
                      "greedy": ((N_GREEDY,), torch.int64)}
            for key, (shape, dtype) in shapes.items():
                tensor = f.get_tensor(f"prompt{i}.{key}")
                assert tuple(tensor.shape) == shape and tensor.dtype == dtype, (key, tensor.shape, tensor.dtype)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_fixture(fx: Fixture) -> tuple[int, float]:
    """Write tests/fixtures/<fx.name>/; returns (bytes on disk, min greedy gap)."""
    folder = FIXTURES_DIR / fx.name
    print(f"[{fx.name}] {fx.description}", flush=True)
    if folder.exists():
        shutil.rmtree(folder)

    # 1. Random model in fp32 with O(1) init, rounded to the checkpoint dtype and saved.
    torch.manual_seed(zlib.crc32(fx.name.encode()))
    config = build_config(fx)
    _, model_cls = ARCHS[fx.arch]
    model = model_cls(config)
    reinit_weights(model)
    model = model.to(DTYPES[fx.dtype]).eval()
    save_kwargs = {"max_shard_size": fx.max_shard_size} if fx.max_shard_size else {}
    model.save_pretrained(folder, **save_kwargs)
    if fx.legacy_rope_key:
        rewrite_config_legacy(folder, fx.legacy_rope_key)
    files = check_checkpoint_files(fx, folder, model)

    # 2. The reloaded checkpoint must match the rounded weights in a fresh fp32 model.
    #    (Not `model.float()`: `.to(bfloat16)` also rounds the non-persistent RoPE inv_freq
    #    buffer, which the checkpoint does not store and from_pretrained recomputes in fp32.)
    reference = model_cls(config)
    reference.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    reference.set_attn_implementation("eager")
    check_reload(fx, folder, reference.eval())
    del model, reference

    # 3. Expected outputs, each prompt from freshly loaded models.
    tensors: dict[str, torch.Tensor] = {}
    min_gap = float("inf")
    logit_std = []
    for i in range(len(fx.prompt_lengths)):
        ids, logits, hidden, tokens, gap = expected_for_prompt(fx, folder, i, config.vocab_size)
        tensors[f"prompt{i}.input_ids"] = ids
        tensors[f"prompt{i}.logits"] = logits
        tensors[f"prompt{i}.hidden"] = hidden
        tensors[f"prompt{i}.greedy"] = tokens
        min_gap = min(min_gap, gap)
        logit_std.append(logits.std().item())

    metadata = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "generator": "scripts/make_fixtures.py",
        "n_prompts": str(len(fx.prompt_lengths)),
        "n_greedy": str(N_GREEDY),
        "checkpoint_dtype": fx.dtype,
        "expected_from": "float32 upcast of the checkpoint weights",
        "min_greedy_gap": f"{min_gap:.6f}",
        "description": fx.description,
    }
    expected_path = folder / "expected.safetensors"
    save_file(tensors, expected_path, metadata=metadata)
    sort_metadata_in_place(expected_path)
    check_expected_file(expected_path, fx, config)

    size = folder_size(folder)
    print(f"    {len(files)} weight file(s), {size / 1024:.1f} KiB, min greedy gap {min_gap:.4f}, "
          f"logits std {min(logit_std):.2f}..{max(logit_std):.2f}", flush=True)
    return size, min_gap


def make_big(outdir: Path) -> None:
    """A random bf16 DiffLlama with DiffLlama-0.3B-handcut's shapes (~1.24B parameters)."""
    config = DiffLlamaConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128001,
        # The RoPE of the real checkpoint (it only changes the rotation frequencies).
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
    )
    torch.manual_seed(0)
    model = DiffLlamaForCausalLM._from_config(config, dtype=torch.bfloat16)  # HF default init
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[big] DiffLlama, {n_params / 1e9:.3f}B parameters, bf16", flush=True)
    if outdir.exists():
        shutil.rmtree(outdir)
    model.save_pretrained(outdir)
    print(f"[big] wrote {outdir} ({folder_size(outdir) / 2**30:.2f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="fixtures to (re)generate (default: all)")
    parser.add_argument("--big", type=Path, metavar="OUTDIR",
                        help="write a ~1.2B-parameter random bf16 DiffLlama to OUTDIR instead")
    args = parser.parse_args()

    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.big:
        make_big(args.big.resolve())
        return

    by_name = {fx.name: fx for fx in FIXTURES}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown fixture(s) {unknown}; known: {', '.join(by_name)}")
    selected = [by_name[n] for n in args.names] if args.names else FIXTURES

    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    results = {fx.name: make_fixture(fx) for fx in selected}

    print("\nfixture                     size      min greedy gap")
    for name, (size, gap) in results.items():
        print(f"  {name:<24} {size / 1024:7.1f} KiB   {gap:.4f}")
    total = sum(folder_size(p) for p in FIXTURES_DIR.iterdir() if p.is_dir())
    print(f"  {'total (tests/fixtures)':<24} {total / 1024:7.1f} KiB")


if __name__ == "__main__":
    main()
