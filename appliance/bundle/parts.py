"""Blobs split into parts for FAT32 media (no file over 4 GiB), joined again while importing."""

from __future__ import annotations

import hashlib
import re
from types import TracebackType
from typing import IO

from appliance.bundle.format import BundlePart
from appliance.bundle.source import BundleInvalid, BundleSource

# FAT32 holds files up to 4 GiB - 1 byte; leave room to spare
DEFAULT_PART_SIZE = 4 * 1024**3 - 1024**2
MIN_PART_SIZE = 1024**2
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_size(text: str) -> int:
    """``4000M``, ``3.9GiB``, ``1048576`` → bytes (``KiB``/``MiB``/``GiB`` are binary)."""
    match = _SIZE_RE.match(text.lower())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 4000M, 3.9GiB, 1048576)")
    size = int(float(match.group(1)) * _UNITS[match.group(2)])
    if size < MIN_PART_SIZE:
        raise ValueError(f"part size {text!r} is below the minimum of 1 MiB")
    return size


def part_name(blob_rel: str, number: int) -> str:
    return f"{blob_rel}.part{number:04d}"


class PartsReader:
    """Reads the concatenation of ``parts`` from ``offset``, checking each part it reads whole.

    A missing or short part, or one whose sha256 differs, raises BundleInvalid naming it; the
    blob's own digest is checked by the caller as well.
    """

    def __init__(self, src: BundleSource, parts: list[BundlePart], offset: int = 0) -> None:
        self.src = src
        self.parts = parts
        self._index = 0
        self._reader: IO[bytes] | None = None
        self._hasher: hashlib._Hash | None = None
        self._left = 0
        start = 0
        while self._index < len(parts) and start + parts[self._index].size <= offset:
            start += parts[self._index].size
            self._index += 1
        self._skip = offset - start

    def _open_next(self) -> bool:
        if self._index >= len(self.parts):
            return False
        part = self.parts[self._index]
        size = self.src.size(part.path)
        if size is None:
            raise BundleInvalid(f"part {part.path} is missing; copy every .part file of the "
                                "bundle onto the medium and import again (it resumes)")
        if size != part.size:
            raise BundleInvalid(f"part {part.path} is {size} bytes, the manifest says "
                                f"{part.size}; it is truncated or corrupt")
        self._reader = self.src.open(part.path)
        if self._skip:
            # resuming in the middle of a part: the blob's digest still covers these bytes
            self._reader.seek(self._skip)
            self._hasher = None
            self._left = part.size - self._skip
            self._skip = 0
        else:
            self._hasher = hashlib.sha256()
            self._left = part.size
        return True

    def _finish_part(self) -> None:
        part = self.parts[self._index]
        if self._hasher is not None and self._hasher.hexdigest() != part.sha256:
            raise BundleInvalid(f"part {part.path} does not match its sha256 in bundle.json; "
                                "the medium holds a damaged copy")
        if self._reader is not None:
            self._reader.close()
        self._reader = None
        self._index += 1

    def read(self, n: int = -1) -> bytes:
        while True:
            if self._reader is None and not self._open_next():
                return b""
            assert self._reader is not None
            want = self._left if n < 0 else min(n, self._left)
            block = self._reader.read(want) if want else b""
            if want and not block:
                raise BundleInvalid(f"part {self.parts[self._index].path} ended early; it is "
                                    "truncated")
            if self._hasher is not None:
                self._hasher.update(block)
            self._left -= len(block)
            if self._left == 0:
                self._finish_part()
            if block:
                return block

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> PartsReader:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
