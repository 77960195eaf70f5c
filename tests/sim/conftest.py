"""Factories for simulator tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest


def _gguf_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, meta: dict[str, int | str], tensors: dict[str, tuple[int, ...]]) -> Path:
    """Write a GGUF v3 header (metadata and tensor table, no tensor data)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, value in meta.items():
        out += _gguf_str(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + _gguf_str(value)
        else:
            out += struct.pack("<II", 4, value)
    offset = 0
    for name, dims in tensors.items():
        out += _gguf_str(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 1, offset)
        offset += 2 * int(__import__("math").prod(dims))
    path.write_bytes(out)
    return path


@pytest.fixture
def llama_config(tmp_path: Path) -> Path:
    """A Llama-3-8B config.json on disk."""
    cfg = {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    }
    path = tmp_path / "llama3" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    return path
