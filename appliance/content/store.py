"""Content-addressed blob store: ``DATA_DIR/blobs/sha256/<hex>``, written once, verified."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Protocol

from appliance.kernel.errors import ApplianceError

CHUNK = 4 * 1024 * 1024


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _file_opener(path: Path) -> Callable[[int], Reader]:
    def open_at(offset: int) -> Reader:
        reader = path.open("rb")
        reader.seek(offset)
        return reader
    return open_at


class DigestMismatch(ApplianceError, ValueError):
    status = 422
    code = "digest_mismatch"


class NoSpace(ApplianceError, OSError):
    status = 507
    code = "insufficient_storage"


class BlobStore:
    """Blobs by sha256 digest. Writes go to ``.incoming`` and are renamed once verified."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"

    def path(self, digest: str) -> Path:
        algo, _, hexdigest = digest.partition(":")
        return self.root / algo / hexdigest

    def has(self, digest: str, size: int) -> bool:
        try:
            return self.path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def copy_in(self, src: Path | Callable[[int], Reader], digest: str, size: int,
                progress: Callable[[int], None] | None = None) -> None:
        """Copy ``src`` in, hashing as it goes; resume a partial copy left by an interruption.

        ``src`` is a file or a function that opens a reader positioned at a given offset.
        Raises DigestMismatch (and discards the partial file) when the content is not
        ``digest``, and NoSpace when the disk fills up.
        """
        self.incoming.mkdir(parents=True, exist_ok=True)
        partial = self.incoming / (digest.replace(":", "-") + ".partial")
        hasher = hashlib.sha256()
        done = 0
        if partial.exists():
            done = partial.stat().st_size
            if done > size:
                partial.unlink()
                done = 0
            else:
                with partial.open("rb") as have:
                    while block := have.read(CHUNK):
                        hasher.update(block)
                if progress and done:
                    progress(done)
        opener = _file_opener(src) if isinstance(src, Path) else src
        label = src.name if isinstance(src, Path) else digest
        try:
            with closing(opener(done)) as reader, partial.open("ab") as writer:
                while block := reader.read(CHUNK):
                    hasher.update(block)
                    writer.write(block)
                    if progress:
                        progress(len(block))
                writer.flush()
                os.fsync(writer.fileno())
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC: keep the partial copy so a retry resumes
                raise NoSpace(f"disk full while copying {digest}: free space and run the "
                              "import again; it resumes where it stopped") from None
            raise
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest or partial.stat().st_size != size:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(f"{label}: content is {actual}, the manifest says {digest}")
        final = self.path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        os.chmod(final, 0o444)

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
