"""A safetensors reader in numpy: header fully checked, tensors memory-mapped, no torch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ModelFileError", "SafetensorsFile"]

Float32Array = npt.NDArray[np.float32]


class ModelFileError(ValueError):
    """A model file is missing, unreadable, malformed or describes an unsupported model."""

    def __init__(self, file: str, detail: str) -> None:
        super().__init__(f"{file}: {detail}")
        self.file = file
        self.detail = detail


# --------------------------------------------------------------------------- safetensors

# Sizes of every dtype the format defines, so offsets can be checked even for tensors we
# never convert (BERT checkpoints carry an I64 ``position_ids`` buffer, for one).
_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_FLOAT_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}
# The reference implementation refuses headers above 100 MB; so do we, before reading one.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsFile:
    """Read-only view of a ``.safetensors`` file: 8-byte header length, JSON header, raw data."""

    def __init__(self, path: Path, *, name: str = "model.safetensors") -> None:
        """Parse and validate the header of ``path``; ``name`` is the file name used in errors."""
        self._name = name
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise ModelFileError(name, "truncated: shorter than the 8-byte header length")
                header_len = int.from_bytes(prefix, "little")
                if header_len > _MAX_HEADER_BYTES:
                    raise ModelFileError(name, f"corrupt header: length {header_len} is too large")
                if header_len > size - 8:
                    raise ModelFileError(
                        name,
                        f"truncated: header length {header_len} exceeds the {size - 8} bytes "
                        "after the length prefix",
                    )
                raw_header = f.read(header_len)
        except OSError as exc:
            raise ModelFileError(name, f"cannot read {path}: {exc}") from exc
        self._data_offset = 8 + header_len
        self._data_len = size - self._data_offset
        self._tensors = self._parse_header(raw_header)
        self._path = path
        self._buffer: npt.NDArray[np.uint8] | None = None

    def _parse_header(self, raw: bytes) -> dict[str, _TensorInfo]:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(self._name, f"corrupt header: not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise ModelFileError(self._name, "corrupt header: expected a JSON object")
        tensors: dict[str, _TensorInfo] = {}
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            tensors[key] = self._parse_entry(key, entry)
        return tensors

    def _parse_entry(self, key: str, entry: object) -> _TensorInfo:
        def bad(why: str) -> ModelFileError:
            return ModelFileError(self._name, f"corrupt header: tensor {key!r} {why}")

        if not isinstance(entry, dict):
            raise bad("is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise bad("has no dtype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= self._data_len
        ):
            raise bad(f"has data_offsets {offsets!r} outside the {self._data_len} data bytes")
        start, end = offsets
        item_size = _DTYPE_SIZES.get(dtype)
        if item_size is not None and end - start != (needed := math.prod(shape) * item_size):
            raise bad(f"spans {end - start} bytes, but {dtype} {shape} takes {needed}")
        return _TensorInfo(dtype, tuple(shape), start, end)

    @property
    def names(self) -> list[str]:
        """Names of the tensors in the file."""
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        """Shape of tensor ``key``."""
        return self._info(key).shape

    def float32(self, key: str) -> Float32Array:
        """Tensor ``key`` converted to a fresh float32 array (F32, F16 and BF16 are supported)."""
        info = self._info(key)
        dtype = _FLOAT_DTYPES.get(info.dtype)
        if dtype is None:
            raise ModelFileError(
                self._name,
                f"tensor {key!r} has dtype {info.dtype}; only F32, F16 and BF16 are supported",
            )
        raw = self._data()[info.start : info.end].view(dtype).reshape(info.shape)
        if info.dtype == "BF16":
            # bfloat16 is the top half of a float32: widen the bits, then reinterpret.
            widened: npt.NDArray[np.uint32] = raw.astype(np.uint32) << np.uint32(16)
            return widened.view(np.float32)
        return raw.astype(np.float32)  # always a copy: nothing keeps the mapping alive

    def _info(self, key: str) -> _TensorInfo:
        try:
            return self._tensors[key]
        except KeyError:
            raise ModelFileError(self._name, f"tensor {key!r} is missing") from None

    def _data(self) -> npt.NDArray[np.uint8]:
        if self._buffer is None:
            if self._data_len == 0:
                # mmap refuses empty ranges, and a file of empty tensors needs no data anyway.
                self._buffer = np.zeros(0, dtype=np.uint8)
            else:
                self._buffer = np.memmap(
                    self._path, dtype=np.uint8, mode="r", offset=self._data_offset
                )
        return self._buffer
