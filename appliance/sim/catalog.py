"""Catalog of well-known model architectures (published config.json facts)."""

from __future__ import annotations

import re

from appliance.sim.errors import SimInputError
from appliance.sim.shapes import ModelShape

# name: (arch, hidden, layers, heads, kv_heads, head_dim, ffn, vocab, experts, top-k,
#        gated MLP, tied embeddings)
_Row = tuple[str, int, int, int, int, int, int, int, int, int, bool, bool]
_MODELS: dict[str, _Row] = {
    "llama-7b": ("llama", 4096, 32, 32, 32, 128, 11008, 32000, 1, 1, True, False),
    "llama-2-7b": ("llama", 4096, 32, 32, 32, 128, 11008, 32000, 1, 1, True, False),
    "llama-2-13b": ("llama", 5120, 40, 40, 40, 128, 13824, 32000, 1, 1, True, False),
    "llama-2-70b": ("llama", 8192, 80, 64, 8, 128, 28672, 32000, 1, 1, True, False),
    "llama-3-8b": ("llama", 4096, 32, 32, 8, 128, 14336, 128256, 1, 1, True, False),
    "llama-3-70b": ("llama", 8192, 80, 64, 8, 128, 28672, 128256, 1, 1, True, False),
    "llama-3.1-8b": ("llama", 4096, 32, 32, 8, 128, 14336, 128256, 1, 1, True, False),
    "llama-3.1-70b": ("llama", 8192, 80, 64, 8, 128, 28672, 128256, 1, 1, True, False),
    "llama-3.1-405b": ("llama", 16384, 126, 128, 8, 128, 53248, 128256, 1, 1, True, False),
    "llama-3.2-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, 1, 1, True, True),
    "llama-3.2-3b": ("llama", 3072, 28, 24, 8, 128, 8192, 128256, 1, 1, True, True),
    "mistral-7b": ("mistral", 4096, 32, 32, 8, 128, 14336, 32000, 1, 1, True, False),
    "mixtral-8x7b": ("mixtral", 4096, 32, 32, 8, 128, 14336, 32000, 8, 2, True, False),
    "mixtral-8x22b": ("mixtral", 6144, 56, 48, 8, 128, 16384, 32768, 8, 2, True, False),
    "qwen1.5-7b": ("qwen2", 4096, 32, 32, 32, 128, 11008, 151936, 1, 1, True, False),
    "qwen2-7b": ("qwen2", 3584, 28, 28, 4, 128, 18944, 152064, 1, 1, True, False),
    "qwen2-72b": ("qwen2", 8192, 80, 64, 8, 128, 29568, 152064, 1, 1, True, False),
    "qwen2.5-7b": ("qwen2", 3584, 28, 28, 4, 128, 18944, 152064, 1, 1, True, False),
    "qwen2.5-32b": ("qwen2", 5120, 64, 40, 8, 128, 27648, 152064, 1, 1, True, False),
    "qwen2.5-72b": ("qwen2", 8192, 80, 64, 8, 128, 29568, 152064, 1, 1, True, False),
    "gemma-2b": ("gemma", 2048, 18, 8, 1, 256, 16384, 256000, 1, 1, True, True),
    "gemma-7b": ("gemma", 3072, 28, 16, 16, 256, 24576, 256000, 1, 1, True, True),
    "gemma-2-9b": ("gemma2", 3584, 42, 16, 8, 256, 14336, 256000, 1, 1, True, True),
    "gemma-2-27b": ("gemma2", 4608, 46, 32, 16, 128, 36864, 256000, 1, 1, True, True),
    "gpt-j-6b": ("gptj", 4096, 28, 16, 16, 256, 16384, 50400, 1, 1, False, False),
    "gpt-neox-20b": ("gpt_neox", 6144, 44, 64, 64, 96, 24576, 50432, 1, 1, False, False),
    "falcon-7b": ("falcon", 4544, 32, 71, 1, 64, 18176, 65024, 1, 1, False, True),
    "falcon-40b": ("falcon", 8192, 60, 128, 8, 64, 32768, 65024, 1, 1, False, True),
    "bloom-7b1": ("bloom", 4096, 30, 32, 32, 128, 16384, 250880, 1, 1, False, True),
    "opt-6.7b": ("opt", 4096, 32, 32, 32, 128, 16384, 50272, 1, 1, False, True),
    # DeciLM varies KV heads per layer (2 or 4); 4 is the upper bound used for memory.
    "decilm-7b": ("deci", 4096, 32, 32, 4, 128, 14336, 32000, 1, 1, True, False),
    "aquila-7b": ("aquila", 4096, 32, 32, 32, 128, 11008, 100008, 1, 1, True, False),
    "phi-3-mini": ("phi3", 3072, 32, 32, 32, 96, 8192, 32064, 1, 1, True, False),
    "smollm2-135m": ("llama", 576, 30, 9, 3, 64, 1536, 49152, 1, 1, True, True),
    "smollm2-1.7b": ("llama", 2048, 24, 32, 32, 64, 8192, 49152, 1, 1, True, True),
}

_ALIASES = {
    "meta-llama-3-8b": "llama-3-8b",
    "meta-llama-3-70b": "llama-3-70b",
    "meta-llama-3.1-8b": "llama-3.1-8b",
    "meta-llama-3.1-70b": "llama-3.1-70b",
    "meta-llama-3.1-405b": "llama-3.1-405b",
    "llama2-7b": "llama-2-7b",
    "llama2-13b": "llama-2-13b",
    "llama2-70b": "llama-2-70b",
    "llama3-8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
    "gptj-6b": "gpt-j-6b",
    "phi-3-mini-4k": "phi-3-mini",
    "phi-3-mini-128k": "phi-3-mini",
}

_SUFFIXES = re.compile(r"(-(hf|instruct|chat|it|base|v0\.\d|v\d|4k|128k))+$")


def normalise_model_name(name: str) -> str:
    """Map a Hugging Face id or a loose spelling to a catalog key (it may not exist)."""
    key = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    key = _SUFFIXES.sub("", key)
    return _ALIASES.get(key, key)


def known_models() -> list[str]:
    """Names the catalog answers to."""
    return sorted(_MODELS)


def lookup_model(name: str) -> ModelShape:
    """Return the catalog shape for ``name`` (a catalog key or Hugging Face id)."""
    key = normalise_model_name(name)
    row = _MODELS.get(key)
    if row is None:
        raise SimInputError(
            f"unknown model {name!r}: give a config.json / .gguf path or one of "
            + ", ".join(known_models()),
            code="unknown_model",
        )
    arch, hidden, layers, heads, kv, hd, ffn, vocab, experts, k, gated, tied = row
    return ModelShape(
        name=key,
        architecture=arch,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hd,
        intermediate_size=ffn,
        vocab_size=vocab,
        num_experts=experts,
        experts_per_token=k,
        gated_mlp=gated,
        tie_embeddings=tied,
    )
