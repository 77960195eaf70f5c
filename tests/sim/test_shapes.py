"""Model shapes from config.json, GGUF and the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.sim import SimInputError, lookup_model, resolve_model, shape_from_hf_config
from appliance.sim.shapes import shape_from_gguf
from tests.sim.conftest import write_gguf


def test_catalog_params_match_published_counts() -> None:
    assert lookup_model("meta-llama/Llama-2-7b-hf").params_total / 1e9 == pytest.approx(6.74, 0.01)
    assert lookup_model("llama-3-70b").params_total / 1e9 == pytest.approx(70.6, 0.01)
    mixtral = lookup_model("mistralai/Mixtral-8x7B-v0.1")
    assert mixtral.params_total / 1e9 == pytest.approx(46.7, 0.01)
    assert mixtral.params_active / 1e9 == pytest.approx(12.9, 0.02)


def test_kv_bytes_per_token_formula() -> None:
    shape = lookup_model("llama-3-70b")
    # 2 · layers · kv_heads · head_dim · bytes
    assert shape.kv_bytes_per_token(2.0) == 2 * 80 * 8 * 128 * 2


def test_config_json_path_and_directory(llama_config: Path) -> None:
    by_file = resolve_model(str(llama_config))
    by_dir = resolve_model(str(llama_config.parent))
    assert by_file == by_dir
    assert by_file.params_total == lookup_model("llama-3-8b").params_total


@pytest.mark.parametrize(
    ("cfg", "kv", "gated"),
    [
        (
            {
                "model_type": "falcon",
                "hidden_size": 4544,
                "num_hidden_layers": 32,
                "num_attention_heads": 71,
                "multi_query": True,
                "vocab_size": 65024,
            },
            1,
            False,
        ),
        (
            {
                "model_type": "gptj",
                "n_embd": 4096,
                "n_layer": 28,
                "n_head": 16,
                "vocab_size": 50400,
            },
            16,
            False,
        ),
        (
            {
                "model_type": "gpt_neox",
                "hidden_size": 6144,
                "num_hidden_layers": 44,
                "num_attention_heads": 64,
                "intermediate_size": 24576,
                "vocab_size": 50432,
            },
            64,
            False,
        ),
        (
            {
                "model_type": "gemma",
                "hidden_size": 3072,
                "num_hidden_layers": 28,
                "num_attention_heads": 16,
                "num_key_value_heads": 16,
                "head_dim": 256,
                "intermediate_size": 24576,
                "vocab_size": 256000,
            },
            16,
            True,
        ),
        (
            {
                "model_type": "qwen2",
                "hidden_size": 3584,
                "num_hidden_layers": 28,
                "num_attention_heads": 28,
                "num_key_value_heads": 4,
                "intermediate_size": 18944,
                "vocab_size": 152064,
            },
            4,
            True,
        ),
    ],
)
def test_architectures(cfg: dict[str, object], kv: int, gated: bool) -> None:
    shape = shape_from_hf_config(cfg)
    assert shape.num_kv_heads == kv
    assert shape.gated_mlp is gated
    assert shape.params_total > 1e9


def test_mixtral_config_is_moe() -> None:
    shape = shape_from_hf_config(
        {
            "model_type": "mixtral",
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "intermediate_size": 14336,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "vocab_size": 32000,
        }
    )
    assert shape.num_experts == 8
    assert shape.params_total == lookup_model("mixtral-8x7b").params_total


def test_gguf_header(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "llama",
            "general.name": "tiny",
            "llama.embedding_length": 64,
            "llama.block_count": 2,
            "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2,
            "llama.feed_forward_length": 128,
            "llama.vocab_size": 1000,
        },
        {"token_embd.weight": (64, 1000), "blk.0.ffn_up.weight": (64, 128)},
    )
    shape = shape_from_gguf(path)
    assert (shape.name, shape.num_layers, shape.num_kv_heads, shape.head_dim) == ("tiny", 2, 2, 16)
    assert shape.params_total == 64 * 1000 + 64 * 128
    assert resolve_model(str(path)) == shape


def test_unknown_model_and_bad_gguf(tmp_path: Path) -> None:
    with pytest.raises(SimInputError, match="unknown model"):
        resolve_model("no-such-model-9b")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE")
    with pytest.raises(SimInputError):
        resolve_model(str(bad))
