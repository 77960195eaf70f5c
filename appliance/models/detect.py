"""Tell what a set of model files is: format and task, from the files themselves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from appliance.kernel.errors import BadRequest

GGUF_MAGIC = b"GGUF"
EMBEDDING_ARCHITECTURES = {"bert", "roberta", "xlm-roberta", "nomic_bert"}


def detect(files: Mapping[str, Path], *, task: str = "") -> tuple[str, str]:
    """Return (format, task) or raise BadRequest saying what is missing."""
    ggufs = [rel for rel, path in files.items() if _magic(path) == GGUF_MAGIC]
    if ggufs:
        if len(files) != 1:
            raise BadRequest("a GGUF model must be exactly one file")
        return "gguf", task or "chat"
    if "config.json" in files and any(rel.endswith(".safetensors") for rel in files):
        try:
            config = json.loads(files["config.json"].read_text())
        except (OSError, ValueError) as exc:
            raise BadRequest(f"config.json is not readable JSON: {exc}") from None
        model_type = str(config.get("model_type", ""))
        if model_type in EMBEDDING_ARCHITECTURES:
            if "tokenizer.json" not in files:
                raise BadRequest("an embedding model needs its tokenizer.json")
            return "bert-safetensors", task or "embedding"
        return "safetensors", task or "chat"
    raise BadRequest(
        "cannot tell the model's format: expected one GGUF file, or config.json with "
        "*.safetensors files")


def _magic(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(4)
