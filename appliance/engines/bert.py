"""Sentence embeddings from a BERT encoder (all-MiniLM-L6-v2 and kin) in plain numpy.

No PyTorch: weights come straight out of ``model.safetensors``, text goes through the
``tokenizers`` package, and the forward pass is a handful of float32 matrix products.
The result matches sentence-transformers' Transformer -> Pooling -> Normalize pipeline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from appliance.engines.safetensors import ModelFileError, SafetensorsFile

__all__ = ["ModelFileError", "SafetensorsFile", "SentenceEmbedder", "gelu_inplace"]

logger = logging.getLogger(__name__)

Float32Array = npt.NDArray[np.float32]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
MODULES_FILE = "modules.json"
SBERT_CONFIG_FILE = "sentence_bert_config.json"

# sentence-transformers' own fallback when a model does not declare max_seq_length.
DEFAULT_MAX_TOKENS = 512

# Bounds on one forward pass, so a request of many long texts cannot allocate gigabytes:
# activations grow with tokens, attention scores with sequences x tokens^2.
_CHUNK_MAX_TOKENS = 4096
_CHUNK_MAX_SCORE_BYTES = 32 * 1024 * 1024


# --------------------------------------------------------------------------- config files


class _BertConfig(msgspec.Struct):
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    model_type: str = ""
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"


class _ModuleEntry(msgspec.Struct):
    type: str
    path: str = ""


class _PoolingConfig(msgspec.Struct):
    word_embedding_dimension: int | None = None
    pooling_mode_cls_token: bool = False
    pooling_mode_mean_tokens: bool = False
    pooling_mode_max_tokens: bool = False
    pooling_mode_mean_sqrt_len_tokens: bool = False
    pooling_mode_weightedmean_tokens: bool = False
    pooling_mode_lasttoken: bool = False


class _SentenceBertConfig(msgspec.Struct):
    max_seq_length: int | None = None


_T = TypeVar("_T")


def _file(files: Mapping[str, Path], name: str) -> Path:
    path = files.get(name)
    if path is None:
        raise ModelFileError(name, "missing from the model's files")
    if not Path(path).is_file():
        raise ModelFileError(name, f"not found at {path}")
    return Path(path)


def _read_json(files: Mapping[str, Path], name: str, kind: type[_T]) -> _T:
    path = _file(files, name)
    try:
        return msgspec.json.decode(path.read_bytes(), type=kind)
    except OSError as exc:
        raise ModelFileError(name, f"cannot read {path}: {exc}") from exc
    except msgspec.DecodeError as exc:  # ValidationError included; its message names the path
        raise ModelFileError(name, str(exc)) from exc


def _check_architecture(config: _BertConfig) -> None:
    def unsupported(why: str) -> ModelFileError:
        return ModelFileError(CONFIG_FILE, f"unsupported architecture: {why}")

    if config.model_type != "bert":
        raise unsupported(f"model_type {config.model_type!r} (only 'bert' is supported)")
    if config.hidden_act != "gelu":
        raise unsupported(f"hidden_act {config.hidden_act!r} (only 'gelu' is supported)")
    if config.position_embedding_type != "absolute":
        raise unsupported(f"position_embedding_type {config.position_embedding_type!r}")
    if min(config.hidden_size, config.num_attention_heads, config.num_hidden_layers) <= 0:
        raise unsupported("hidden_size, num_attention_heads and num_hidden_layers must be > 0")
    if config.hidden_size % config.num_attention_heads:
        raise unsupported(
            f"hidden_size {config.hidden_size} is not a multiple of "
            f"num_attention_heads {config.num_attention_heads}"
        )


@dataclass(frozen=True, slots=True)
class _Pipeline:
    pooling: str  # "mean" | "cls" | "max" | "mean_sqrt_len"
    normalize: bool


def _read_pipeline(files: Mapping[str, Path], hidden_size: int) -> _Pipeline:
    """Follow modules.json; without one, do what sentence-transformers does: mean, no norm."""
    if MODULES_FILE not in files:
        return _Pipeline(pooling="mean", normalize=False)
    modules = _read_json(files, MODULES_FILE, list[_ModuleEntry])
    kinds = [m.type.rsplit(".", 1)[-1] for m in modules]
    if not kinds or kinds[0] != "Transformer":
        raise ModelFileError(MODULES_FILE, f"the first module must be a Transformer, not {kinds}")
    pooling, pooled, normalize = "", False, False
    for module, kind in zip(modules[1:], kinds[1:], strict=True):
        if kind == "Pooling" and not pooled and not normalize:
            pooling, pooled = _read_pooling(files, module.path, hidden_size), True
        elif kind == "Normalize" and pooled and not normalize:
            normalize = True
        else:
            raise ModelFileError(
                MODULES_FILE, f"unsupported module {module.type!r} in the pipeline {kinds}"
            )
    if not pooled:
        # Without pooling the model yields one vector per token, not a sentence embedding.
        raise ModelFileError(MODULES_FILE, f"no Pooling module in the pipeline {kinds}")
    return _Pipeline(pooling=pooling, normalize=normalize)


def _read_pooling(files: Mapping[str, Path], module_path: str, hidden_size: int) -> str:
    name = f"{module_path.strip('/')}/config.json" if module_path.strip("/") else "config.json"
    config = _read_json(files, name, _PoolingConfig)
    if config.word_embedding_dimension not in (None, hidden_size):
        raise ModelFileError(
            name,
            f"word_embedding_dimension {config.word_embedding_dimension} does not match "
            f"hidden_size {hidden_size}",
        )
    modes = {
        "cls": config.pooling_mode_cls_token,
        "mean": config.pooling_mode_mean_tokens,
        "max": config.pooling_mode_max_tokens,
        "mean_sqrt_len": config.pooling_mode_mean_sqrt_len_tokens,
        "weightedmean": config.pooling_mode_weightedmean_tokens,
        "lasttoken": config.pooling_mode_lasttoken,
    }
    chosen = [mode for mode, on in modes.items() if on]
    if len(chosen) != 1 or chosen[0] in ("weightedmean", "lasttoken"):
        raise ModelFileError(
            name, f"unsupported pooling {chosen}: exactly one of cls/mean/max/mean_sqrt_len"
        )
    return chosen[0]


# --------------------------------------------------------------------------- maths

# Abramowitz & Stegun 7.1.26: erfc(z) ~= (a1 t + ... + a5 t^5) exp(-z^2), t = 1 / (1 + p z),
# for z >= 0, with |error| <= 1.5e-7: below float32 resolution where it matters. (scipy,
# which has erf, is not a dependency; math.erf element by element is far too slow.)
_ERF_P = 0.3275911
_ERF_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# GELU needs erf(x / sqrt 2) and halves it; fold both into the constants.
_GELU_P = np.float32(_ERF_P / math.sqrt(2.0))
_GELU_A = tuple(np.float32(a / 2.0) for a in reversed(_ERF_A))  # Horner order, a5 first


def gelu_inplace(x: Float32Array) -> Float32Array:
    """Exact (erf) GELU, as BERT's ``hidden_act: gelu``, computed in place and returned.

    GELU(x) = x Phi(x) = max(x, 0) - |x| * erfc(|x| / sqrt 2) / 2: written this way every
    term depends on |x| only, which saves the sign fix-up an erf would need.
    """
    ax = np.abs(x)
    t = ax * _GELU_P
    t += 1.0
    np.reciprocal(t, out=t)
    poly = t * _GELU_A[0]
    for a in _GELU_A[1:]:
        poly += a
        poly *= t
    tail = np.square(ax, out=t)  # t is no longer needed
    tail *= -0.5
    np.exp(tail, out=tail)
    poly *= tail  # erfc(|x| / sqrt 2) / 2
    poly *= ax
    np.maximum(x, 0.0, out=x)
    x -= poly
    return x


def _layer_norm(x: Float32Array, weight: Float32Array, bias: Float32Array, eps: float) -> None:
    """LayerNorm over the last axis, in place."""
    x -= x.mean(axis=-1, keepdims=True)
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    var += eps
    x /= np.sqrt(var)
    x *= weight
    x += bias


# --------------------------------------------------------------------------- the encoder


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: Float32Array  # [hidden, 3 * hidden], query part pre-scaled by 1/sqrt(head)
    qkv_bias: Float32Array
    attn_out_weight: Float32Array  # [hidden, hidden]
    attn_out_bias: Float32Array
    attn_norm_weight: Float32Array
    attn_norm_bias: Float32Array
    inter_weight: Float32Array  # [hidden, intermediate]
    inter_bias: Float32Array
    out_weight: Float32Array  # [intermediate, hidden]
    out_bias: Float32Array
    out_norm_weight: Float32Array
    out_norm_bias: Float32Array


@dataclass(frozen=True, slots=True)
class _Weights:
    word: Float32Array
    position: Float32Array
    token_type: Float32Array
    norm_weight: Float32Array
    norm_bias: Float32Array
    layers: tuple[_Layer, ...]


def _load_weights(weights: SafetensorsFile, config: _BertConfig) -> _Weights:
    hidden, inter = config.hidden_size, config.intermediate_size
    names = set(weights.names)
    # Plain BertModel exports have no prefix; *ForMaskedLM and friends nest it under "bert.".
    prefix = next(
        (p for p in ("", "bert.", "model.") if f"{p}embeddings.word_embeddings.weight" in names),
        None,
    )
    if prefix is None:
        raise ModelFileError(
            WEIGHTS_FILE, "no BERT weights: 'embeddings.word_embeddings.weight' is missing"
        )

    def get(key: str, shape: tuple[int, ...]) -> Float32Array:
        actual = weights.shape(prefix + key)
        if actual != shape:
            raise ModelFileError(
                WEIGHTS_FILE, f"tensor {prefix + key!r} has shape {actual}, expected {shape}"
            )
        return weights.float32(prefix + key)

    def linear(key: str, n_in: int, n_out: int) -> tuple[Float32Array, Float32Array]:
        # torch Linear stores [out, in]; keep [in, out] so activations multiply on the left.
        weight = np.ascontiguousarray(get(f"{key}.weight", (n_out, n_in)).T)
        return weight, get(f"{key}.bias", (n_out,))

    def norm(key: str) -> tuple[Float32Array, Float32Array]:
        return get(f"{key}.weight", (hidden,)), get(f"{key}.bias", (hidden,))

    scale = np.float32(1.0 / math.sqrt(hidden // config.num_attention_heads))
    layers = []
    for i in range(config.num_hidden_layers):
        base = f"encoder.layer.{i}"
        q_w, q_b = linear(f"{base}.attention.self.query", hidden, hidden)
        k_w, k_b = linear(f"{base}.attention.self.key", hidden, hidden)
        v_w, v_b = linear(f"{base}.attention.self.value", hidden, hidden)
        layers.append(
            _Layer(
                # One fused projection instead of three; folding the softmax scale into the
                # query saves a pass over the [batch, heads, tokens, tokens] scores.
                np.concatenate([q_w * scale, k_w, v_w], axis=1),
                np.concatenate([q_b * scale, k_b, v_b]),
                *linear(f"{base}.attention.output.dense", hidden, hidden),
                *norm(f"{base}.attention.output.LayerNorm"),
                *linear(f"{base}.intermediate.dense", hidden, inter),
                *linear(f"{base}.output.dense", inter, hidden),
                *norm(f"{base}.output.LayerNorm"),
            )
        )
    return _Weights(
        word=get("embeddings.word_embeddings.weight", (config.vocab_size, hidden)),
        position=get(
            "embeddings.position_embeddings.weight", (config.max_position_embeddings, hidden)
        ),
        token_type=get("embeddings.token_type_embeddings.weight", (config.type_vocab_size, hidden)),
        norm_weight=get("embeddings.LayerNorm.weight", (hidden,)),
        norm_bias=get("embeddings.LayerNorm.bias", (hidden,)),
        layers=tuple(layers),
    )


class SentenceEmbedder:
    """A sentence-transformers BERT model (e.g. all-MiniLM-L6-v2) run with numpy on the CPU.

    Immutable once loaded, so one instance may serve several executor threads at once.
    """

    def __init__(
        self,
        *,
        config: _BertConfig,
        weights: _Weights,
        tokenizer: Tokenizer,
        counter: Tokenizer,
        pipeline: _Pipeline,
        max_tokens: int,
    ) -> None:
        """Use :meth:`load`; this only assembles already validated parts."""
        self._config = config
        self._weights = weights
        self._tokenizer = tokenizer
        self._counter = counter
        self._pipeline = pipeline
        self._max_tokens = max_tokens

    @classmethod
    def load(cls, files: Mapping[str, Path]) -> SentenceEmbedder:
        """Load a model from its files.

        ``files`` maps the model's relative file names ('config.json', 'model.safetensors',
        'tokenizer.json', '1_Pooling/config.json', 'modules.json', ...) to paths on disk (the
        paths may have no extension: they are content-addressed blobs). Raises
        :class:`ModelFileError` (a ``ValueError``) naming the file at fault.
        """
        config = _read_json(files, CONFIG_FILE, _BertConfig)
        _check_architecture(config)
        pipeline = _read_pipeline(files, config.hidden_size)

        max_tokens = DEFAULT_MAX_TOKENS
        if SBERT_CONFIG_FILE in files:
            declared = _read_json(files, SBERT_CONFIG_FILE, _SentenceBertConfig).max_seq_length
            if declared is not None:
                if declared < 2:
                    raise ModelFileError(SBERT_CONFIG_FILE, f"max_seq_length {declared} < 2")
                max_tokens = declared
        max_tokens = min(max_tokens, config.max_position_embeddings)

        tokenizer = _load_tokenizer(files, config)
        counter = Tokenizer.from_str(tokenizer.to_str())
        counter.no_truncation()
        tokenizer.enable_truncation(max_length=max_tokens)

        weights = _load_weights(SafetensorsFile(_file(files, WEIGHTS_FILE)), config)
        logger.info(
            "loaded BERT encoder: %d layers, %d dimensions, %s pooling%s, max %d tokens",
            config.num_hidden_layers,
            config.hidden_size,
            pipeline.pooling,
            " + normalize" if pipeline.normalize else "",
            max_tokens,
            extra={"layers": config.num_hidden_layers, "dimensions": config.hidden_size},
        )
        return cls(
            config=config,
            weights=weights,
            tokenizer=tokenizer,
            counter=counter,
            pipeline=pipeline,
            max_tokens=max_tokens,
        )

    @property
    def dimensions(self) -> int:
        """Length of each embedding vector."""
        return self._config.hidden_size

    @property
    def max_tokens(self) -> int:
        """Most tokens (including [CLS] and [SEP]) the model sees of one text."""
        return self._max_tokens

    def embed(self, texts: Sequence[str]) -> tuple[Float32Array, list[int]]:
        """Embed ``texts``.

        Returns a float32 array [len(texts), dimensions] (L2-normalised when modules.json has
        Normalize) and the number of tokens embedded per text, [CLS] and [SEP] included.
        Texts longer than :attr:`max_tokens` are truncated.
        """
        batch = _as_list(texts)
        encodings = self._tokenizer.encode_batch(batch)
        ids = [e.ids for e in encodings]
        type_ids = [e.type_ids for e in encodings]
        counts = [len(i) for i in ids]
        out = np.empty((len(batch), self.dimensions), dtype=np.float32)
        for chunk in _chunks(counts, self._config.num_attention_heads):
            out[chunk] = self._encode([ids[i] for i in chunk], [type_ids[i] for i in chunk])
        return out, counts

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before truncation, [CLS] and [SEP] included.

        Unlike the counts from :meth:`embed`, these may exceed :attr:`max_tokens`, so a caller
        can tell which texts would be cut short.
        """
        return [len(e.ids) for e in self._counter.encode_batch(_as_list(texts))]

    def _encode(self, ids: list[list[int]], type_ids: list[list[int]]) -> Float32Array:
        """Forward pass plus pooling for one padded batch."""
        cfg, w = self._config, self._weights
        batch, length = len(ids), max(len(i) for i in ids)
        heads, head_dim, hidden = (
            cfg.num_attention_heads,
            cfg.hidden_size // cfg.num_attention_heads,
            cfg.hidden_size,
        )
        token_ids = np.zeros((batch, length), dtype=np.int64)
        token_types = np.zeros((batch, length), dtype=np.int64)
        mask = np.zeros((batch, length), dtype=bool)
        for row, (seq, types) in enumerate(zip(ids, type_ids, strict=True)):
            token_ids[row, : len(seq)] = seq
            token_types[row, : len(types)] = types
            mask[row, : len(seq)] = True

        x = w.word[token_ids]
        x += w.position[:length]
        x += w.token_type[token_types]
        x = x.reshape(batch * length, hidden)
        _layer_norm(x, w.norm_weight, w.norm_bias, cfg.layer_norm_eps)

        # Padded keys get the most negative float rather than -inf, so even a (theoretical)
        # all-padding row stays finite instead of turning into NaN.
        key_bias = np.where(mask, np.float32(0), np.finfo(np.float32).min).astype(np.float32)
        key_bias = key_bias[:, None, None, :]

        for layer in w.layers:
            qkv = x @ layer.qkv_weight
            qkv += layer.qkv_bias
            q, k, v = qkv.reshape(batch, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            scores = q @ k.transpose(0, 1, 3, 2)  # [batch, heads, length, length]
            scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)

            attended = context @ layer.attn_out_weight
            attended += layer.attn_out_bias
            attended += x
            _layer_norm(attended, layer.attn_norm_weight, layer.attn_norm_bias, cfg.layer_norm_eps)

            inter = attended @ layer.inter_weight
            inter += layer.inter_bias
            gelu_inplace(inter)
            x = inter @ layer.out_weight
            x += layer.out_bias
            x += attended
            _layer_norm(x, layer.out_norm_weight, layer.out_norm_bias, cfg.layer_norm_eps)

        pooled = _pool(x.reshape(batch, length, hidden), mask, self._pipeline.pooling)
        if self._pipeline.normalize:
            # Same floor as torch.nn.functional.normalize, so a zero vector stays zero.
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled


def _load_tokenizer(files: Mapping[str, Path], config: _BertConfig) -> Tokenizer:
    path = _file(files, TOKENIZER_FILE)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for any parse failure
        raise ModelFileError(TOKENIZER_FILE, f"cannot load tokenizer: {exc}") from exc
    if tokenizer.get_vocab_size(with_added_tokens=True) > config.vocab_size:
        raise ModelFileError(
            TOKENIZER_FILE,
            f"vocabulary of {tokenizer.get_vocab_size(with_added_tokens=True)} tokens exceeds "
            f"the model's vocab_size {config.vocab_size}",
        )
    # tokenizer.json ships with fixed padding (128 for MiniLM); we pad per chunk ourselves,
    # only as far as the longest text in it.
    tokenizer.no_padding()
    return tokenizer


def _as_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # A str is a Sequence[str] too; embedding it character by character is never meant.
        raise TypeError("texts must be a sequence of strings, not a single string")
    return list(texts)


def _chunks(counts: Sequence[int], heads: int) -> Iterator[list[int]]:
    """Group text indices into forward passes of similar length within the memory bounds."""
    order = sorted(range(len(counts)), key=counts.__getitem__)
    chunk: list[int] = []
    for index in order:
        length = max(counts[index], 1)  # ascending, so this is the chunk's padded length
        size = len(chunk) + 1
        if chunk and (
            size * length > _CHUNK_MAX_TOKENS
            or size * heads * length * length * 4 > _CHUNK_MAX_SCORE_BYTES
        ):
            yield chunk
            chunk = []
        chunk.append(index)
    if chunk:
        yield chunk


def _pool(tokens: Float32Array, mask: npt.NDArray[np.bool_], mode: str) -> Float32Array:
    """Reduce [batch, length, hidden] token vectors to [batch, hidden] over the real tokens."""
    if mode == "cls":
        return np.ascontiguousarray(tokens[:, 0])
    if mode == "max":
        masked = np.where(mask[:, :, None], tokens, np.float32(-1e9))
        result: Float32Array = masked.max(axis=1)
        return result
    weights = mask.astype(np.float32)
    summed: Float32Array = (weights[:, None, :] @ tokens)[:, 0]  # [batch, hidden]
    # Clamped as sentence-transformers does, so a text without tokens pools to zeros.
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    summed /= np.sqrt(counts) if mode == "mean_sqrt_len" else counts
    return summed
