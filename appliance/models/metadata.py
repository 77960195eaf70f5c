"""What a model is, read from its files' headers: GGUF, safetensors and ``config.json``.

Small readers of our own (no dependency): they read headers only, bound every length they
trust, and raise ``HeaderInvalid`` for a file whose header is damaged or lies about its size.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from appliance.kernel.errors import ApplianceError

MAX_STRING = 16 * 1024 * 1024
MAX_ARRAY = 16 * 1024 * 1024
MAX_KV = 100_000
MAX_TENSORS = 1_000_000
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
SHAPES_KEPT = 64

# llama.cpp's LLAMA_FTYPE values (general.file_type)
GGUF_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}
SAFETENSORS_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                      "F64", "I64", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                      "F6_E3M2", "C64"}


class HeaderInvalid(ApplianceError, ValueError):
    status = 422
    code = "model_header_invalid"


# --- GGUF ---------------------------------------------------------------------------------------


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


class _GGUFReader:
    def __init__(self, f: IO[bytes], name: str, version: int) -> None:
        self.f = f
        self.name = name
        self.version = version

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise HeaderInvalid(f"{self.name}: the GGUF header ends early")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def count(self) -> int:
        return int(self.unpack("<I" if self.version == 1 else "<Q"))

    def string(self) -> str:
        n = self.count()
        if n > MAX_STRING:
            raise HeaderInvalid(f"{self.name}: a GGUF string claims {n} bytes")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            item, n = self.unpack("<I"), self.count()
            if n > MAX_ARRAY:
                raise HeaderInvalid(f"{self.name}: a GGUF array claims {n} items")
            if item in _SCALARS and not keep:
                self.take(n * struct.calcsize(_SCALARS[item]))
                return None
            values = [self.value(item, keep) for _ in range(n)]
            return values if keep else None
        raise HeaderInvalid(f"{self.name}: unknown GGUF value type {kind}")


def read_gguf(path: Path, name: str = "") -> dict[str, Any]:
    """Architecture, context length, quantization, parameter count, chat template…"""
    name = name or path.name
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise HeaderInvalid(f"{name}: not a GGUF file (bad magic)")
        version = struct.unpack("<I", f.read(4) or b"\0\0\0\0")[0]
        if version not in (1, 2, 3):
            raise HeaderInvalid(f"{name}: unsupported GGUF version {version}")
        r = _GGUFReader(f, name, version)
        n_tensors, n_kv = r.count(), r.count()
        if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
            raise HeaderInvalid(f"{name}: GGUF header claims {n_tensors} tensors and {n_kv} "
                                "keys; it is damaged")
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = r.string()
            kind = r.unpack("<I")
            # token lists are large and say nothing the registry shows: skip them
            keep = not key.startswith("tokenizer.ggml.")
            kv[key] = r.value(kind, keep)
        params = 0
        end = 0
        for _ in range(n_tensors):
            r.string()
            dims = r.unpack("<I")
            if dims > 8:
                raise HeaderInvalid(f"{name}: a tensor claims {dims} dimensions")
            shape = [r.count() for _ in range(dims)]
            r.unpack("<I")  # ggml type
            offset = r.unpack("<Q")
            params += math.prod(shape)
            end = max(end, offset)
        if end > size:
            raise HeaderInvalid(f"{name}: tensor data lies beyond the end of the file "
                                f"({end} > {size} bytes); the file is truncated")
    arch = str(kv.get("general.architecture", ""))
    ftype = kv.get("general.file_type")
    return {k: v for k, v in {
        "format": "gguf", "gguf_version": version,
        "architecture": arch, "name": kv.get("general.name"),
        "context_length": kv.get(f"{arch}.context_length"),
        "embedding_length": kv.get(f"{arch}.embedding_length"),
        "block_count": kv.get(f"{arch}.block_count"),
        "quantization": GGUF_FILE_TYPES.get(ftype, str(ftype)) if ftype is not None else None,
        "parameter_count": params, "tensor_count": n_tensors,
        "size_label": kv.get("general.size_label"),
        "chat_template": kv.get("tokenizer.chat_template"),
        "license": kv.get("general.license"),
    }.items() if v is not None}


# --- safetensors --------------------------------------------------------------------------------


def read_safetensors(path: Path, name: str = "") -> dict[str, Any]:
    """Tensor count, dtypes, parameter count and the first tensors' shapes; header checked."""
    name = name or path.name
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise HeaderInvalid(f"{name}: too short for a safetensors file")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise HeaderInvalid(f"{name}: safetensors header claims {n} bytes; the file is "
                                "damaged or truncated")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise HeaderInvalid(f"{name}: safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise HeaderInvalid(f"{name}: safetensors header is not an object")
    data_size = size - 8 - n
    dtypes: Counter[str] = Counter()
    params = 0
    shapes: dict[str, Any] = {}
    spans = []
    for tensor, info in header.items():
        if tensor == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise HeaderInvalid(f"{name}: tensor {tensor!r} has a malformed entry") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise HeaderInvalid(f"{name}: tensor {tensor!r} has unknown dtype {dtype!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
                <= data_size):
            raise HeaderInvalid(f"{name}: tensor {tensor!r} lies outside the file's data")
        spans.append((begin, end))
        dtypes[dtype] += 1
        params += math.prod(shape)
        if len(shapes) < SHAPES_KEPT:
            shapes[tensor] = {"dtype": dtype, "shape": shape}
    spans.sort()
    for (_, end), (begin, _) in itertools.pairwise(spans):
        if begin < end:
            raise HeaderInvalid(f"{name}: tensors overlap in the data section")
    meta = header.get("__metadata__") or {}
    return {"format": "safetensors", "tensor_count": sum(dtypes.values()),
            "parameter_count": params, "dtypes": dict(dtypes), "tensors": shapes,
            "metadata": meta if isinstance(meta, dict) else {}}


CONFIG_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "max_position_embeddings", "vocab_size", "torch_dtype", "rope_theta")


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes()[:MAX_STRING])
    except ValueError as exc:
        raise HeaderInvalid(f"config.json is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise HeaderInvalid("config.json is not an object")
    return {k: config[k] for k in CONFIG_KEYS if k in config}


def extract(files: Mapping[str, Path]) -> dict[str, Any]:
    """Metadata of a model from its files (by their path inside the model)."""
    out: dict[str, Any] = {}
    tensors: dict[str, Any] = {}
    for rel, path in sorted(files.items()):
        lower = rel.lower()
        if lower.endswith(".gguf"):
            out.update(read_gguf(path, rel))
        elif lower.endswith(".safetensors"):
            tensors[rel] = read_safetensors(path, rel)
        elif lower == "config.json":
            out["config"] = read_config(path)
    if tensors:
        out.setdefault("format", "safetensors")
        out["parameter_count"] = sum(t["parameter_count"] for t in tensors.values())
        out["safetensors"] = tensors
        if "config" in out and "architecture" not in out:
            out["architecture"] = out["config"].get("model_type", "")
            if "max_position_embeddings" in out["config"]:
                out["context_length"] = out["config"]["max_position_embeddings"]
    return out
