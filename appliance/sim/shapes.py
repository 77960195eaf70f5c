"""Model shapes: the few numbers of an architecture that decide memory and latency.

A shape comes from a Hugging Face ``config.json``, from a GGUF header, or from the catalog of
well-known models below (published architecture facts).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from appliance.sim.errors import SimInputError


class ModelShape(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Architecture facts of a decoder-only transformer."""

    name: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int = 1
    experts_per_token: int = 1
    gated_mlp: bool = True
    tie_embeddings: bool = False
    #: Parameter count when known exactly (GGUF tensors); otherwise computed from the shape.
    params_override: int = 0

    @property
    def attention_params_per_layer(self) -> int:
        """Weights of Q, K, V and O projections in one layer."""
        q_and_o = 2 * self.hidden_size * self.num_heads * self.head_dim
        k_and_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        return q_and_o + k_and_v

    @property
    def expert_params_per_layer(self) -> int:
        """Weights of one expert's MLP (the whole MLP for a dense model)."""
        mats = 3 if self.gated_mlp else 2
        return mats * self.hidden_size * self.intermediate_size

    @property
    def embedding_params(self) -> int:
        """Token embedding plus output head (once when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)

    @property
    def params_total(self) -> int:
        """All weights: what must sit in memory."""
        if self.params_override:
            return self.params_override
        per_layer = self.attention_params_per_layer + self.num_experts * (
            self.expert_params_per_layer
        )
        if self.num_experts > 1:
            per_layer += self.hidden_size * self.num_experts  # router
        return self.num_layers * per_layer + self.embedding_params

    @property
    def params_active(self) -> int:
        """Weights touched per token: what one token's forward pass multiplies."""
        if self.num_experts <= 1:
            return self.params_total
        idle = self.num_layers * (self.num_experts - self.experts_per_token)
        return self.params_total - idle * self.expert_params_per_layer

    @property
    def params_expert_total(self) -> int:
        """Weights living in experts (zero for a dense model)."""
        if self.num_experts <= 1:
            return 0
        return self.num_layers * self.num_experts * self.expert_params_per_layer

    def kv_bytes_per_token(self, kv_bytes: float) -> float:
        """KV-cache bytes per token, whole model: 2 · layers · kv_heads · head_dim · bytes."""
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * kv_bytes


def _first(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    return default


def shape_from_hf_config(cfg: Mapping[str, Any], name: str = "") -> ModelShape:
    """Build a shape from a Hugging Face ``config.json`` mapping.

    Covers llama, mistral, mixtral, qwen2(-moe), gemma(2), gptj, gpt_neox, falcon and the many
    architectures that reuse llama's field names.
    """
    arch = str(_first(cfg, "model_type", default="llama")).lower()
    if "text_config" in cfg and isinstance(cfg["text_config"], Mapping):
        merged = dict(cfg["text_config"])
        merged.setdefault("model_type", arch)
        return shape_from_hf_config(merged, name)
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    heads = _first(cfg, "num_attention_heads", "n_head", "num_heads")
    if hidden is None or layers is None or heads is None:
        raise SimInputError(
            "config.json lacks hidden_size / num_hidden_layers / num_attention_heads",
            code="bad_model_config",
        )
    hidden, layers, heads = int(hidden), int(layers), int(heads)
    kv_heads = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv")
    if kv_heads is None:
        if arch == "falcon" and not cfg.get("new_decoder_architecture", False):
            kv_heads = 1 if cfg.get("multi_query", True) else heads
        else:
            kv_heads = heads
    head_dim = int(_first(cfg, "head_dim", default=hidden // heads))
    gated = arch not in {"gptj", "gpt_neox", "falcon", "gpt2", "opt", "bloom", "phi"}
    inter = _first(cfg, "intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim")
    if arch == "mixtral" or arch.endswith("_moe"):
        inter = _first(cfg, "moe_intermediate_size", "intermediate_size", default=inter)
    if inter is None:
        inter = 4 * hidden
    experts = int(_first(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=1))
    per_token = int(_first(cfg, "num_experts_per_tok", "num_experts_per_token", default=1))
    tie_default = arch in {"gemma", "gemma2", "gemma3", "falcon", "bloom", "opt"}
    tie = bool(_first(cfg, "tie_word_embeddings", default=tie_default))
    vocab = int(_first(cfg, "vocab_size", "padded_vocab_size", default=32000))
    return ModelShape(
        name=name or str(_first(cfg, "_name_or_path", default=arch)),
        architecture=arch,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=head_dim,
        intermediate_size=int(inter),
        vocab_size=vocab,
        num_experts=max(1, experts),
        experts_per_token=max(1, min(per_token, max(1, experts))),
        gated_mlp=gated,
        tie_embeddings=tie,
    )


# --- GGUF ---------------------------------------------------------------------------------

_GGUF_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise SimInputError("GGUF header is truncated", code="bad_gguf")
    return struct.unpack(fmt, raw)[0]


def _read_str(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > 1 << 24:
        raise SimInputError("GGUF string too long", code="bad_gguf")
    return f.read(length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int) -> Any:
    if vtype in _GGUF_SCALARS:
        return _read(f, _GGUF_SCALARS[vtype])
    if vtype == _GGUF_STRING:
        return _read_str(f)
    if vtype == _GGUF_ARRAY:
        etype = _read(f, "<I")
        count = _read(f, "<Q")
        if etype in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[etype])
            if count > 64:  # long numeric arrays (token scores): only the length matters here
                f.seek(size * count, 1)
                return count
            return [_read(f, _GGUF_SCALARS[etype]) for _ in range(count)]
        items = [_read_value(f, etype) for _ in range(count)]
        return count if count > 64 else items
    raise SimInputError(f"unknown GGUF value type {vtype}", code="bad_gguf")


def read_gguf_header(path: Path) -> tuple[dict[str, Any], int]:
    """Read a GGUF file's metadata and count its parameters from the tensor table."""
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise SimInputError(f"{path} is not a GGUF file", code="bad_gguf")
        version = _read(f, "<I")
        if version < 2:
            raise SimInputError(f"GGUF version {version} is not supported", code="bad_gguf")
        n_tensors = _read(f, "<Q")
        n_kv = _read(f, "<Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _read_str(f)
            meta[key] = _read_value(f, _read(f, "<I"))
        params = 0
        for _ in range(n_tensors):
            _read_str(f)
            n_dims = _read(f, "<I")
            count = 1
            for _ in range(n_dims):
                count *= _read(f, "<Q")
            _read(f, "<I")  # ggml type
            _read(f, "<Q")  # offset
            params += count
    return meta, params


def shape_from_gguf(path: Path) -> ModelShape:
    """Build a shape from a GGUF file's header (no tensor data is read)."""
    meta, params = read_gguf_header(path)
    arch = str(meta.get("general.architecture", "llama"))

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden = get("embedding_length")
    layers = get("block_count")
    heads = get("attention.head_count")
    if hidden is None or layers is None or heads is None:
        raise SimInputError(f"{path}: GGUF header lacks the model's dimensions", code="bad_gguf")
    kv = get("attention.head_count_kv", heads)
    if isinstance(kv, list):  # per-layer counts in some architectures
        kv = max(kv)
    head_dim = get("attention.key_length", int(hidden) // int(heads))
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = get("vocab_size") or (tokens if isinstance(tokens, int) else len(tokens or [])) or 32000
    experts = int(get("expert_count", 1) or 1)
    return ModelShape(
        name=str(meta.get("general.name", path.stem)),
        architecture=arch,
        hidden_size=int(hidden),
        num_layers=int(layers),
        num_heads=int(heads),
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate_size=int(get("expert_feed_forward_length") or get("feed_forward_length", 0)),
        vocab_size=int(vocab),
        num_experts=experts,
        experts_per_token=int(get("expert_used_count", 1) or 1),
        gated_mlp=arch not in {"gptj", "gptneox", "falcon", "gpt2", "bloom"},
        params_override=params,
    )


def resolve_model(spec: str) -> ModelShape:
    """Resolve ``--model``: a path to config.json / a directory holding one / a .gguf, or a name."""
    from appliance.sim.catalog import lookup_model  # catalog imports this module

    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return shape_from_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SimInputError(f"cannot read {path}: {exc}", code="bad_model_config") from exc
        if not isinstance(cfg, dict):
            raise SimInputError(f"{path} is not a JSON object", code="bad_model_config")
        return shape_from_hf_config(cfg, name=path.parent.name or path.stem)
    return lookup_model(spec)
