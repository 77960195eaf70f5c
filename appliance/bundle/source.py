"""Where a bundle is read from: a directory (a USB stick) or a tar of one, read in place.

Both give the importer the same small interface, so a tar is never unpacked to a second copy:
its members are read straight out of the archive. Anything in a tar that is not a plain file
or a directory (symbolic and hard links, devices, FIFOs), and any name that is absolute or
climbs with ``..``, makes the whole archive refused before a byte is imported.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from appliance.kernel.errors import ApplianceError

MAX_TAR_MEMBERS = 1_000_000


class BundleInvalid(ApplianceError, ValueError):
    status = 422
    code = "bundle_invalid"


class BundleSource(Protocol):
    """Read-only access to the files of one bundle by their path inside it."""

    name: str

    def size(self, rel: str) -> int | None:
        """Size of a plain file, None when absent; raise when it is not a plain file."""

    def open(self, rel: str) -> IO[bytes]:
        """A binary reader of a plain file (seekable)."""

    def close(self) -> None:
        """Release the source (close the archive)."""


def read_small(src: BundleSource, rel: str, limit: int) -> bytes | None:
    """A whole small file, None when absent; refuse one larger than ``limit``."""
    size = src.size(rel)
    if size is None:
        return None
    if size > limit:
        raise BundleInvalid(f"{rel} is larger than {limit} bytes")
    with src.open(rel) as f:
        return f.read(limit + 1)[:limit]


class DirSource:
    """A bundle directory."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise BundleInvalid(f"{root} is not a bundle directory or tar")
        self.root = root
        self.name = str(root)

    def size(self, rel: str) -> int | None:
        path = self.root / rel
        if path.is_symlink():
            raise BundleInvalid(f"{rel} is a symbolic link; bundles hold plain files")
        if not path.exists():
            return None
        if not path.is_file():
            raise BundleInvalid(f"{rel} is not a plain file")
        return path.stat().st_size

    def open(self, rel: str) -> IO[bytes]:
        return (self.root / rel).open("rb")

    def close(self) -> None:
        pass


def safe_member_name(name: str) -> str:
    """The normalised relative path of a tar member, or BundleInvalid when it is unsafe."""
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleInvalid(f"the tar holds an absolute or malformed path: {name!r}")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if any(p == ".." for p in parts):
        raise BundleInvalid(f"the tar holds a path that climbs out with '..': {name!r}")
    return "/".join(parts)


class TarSource:
    """A bundle inside an uncompressed tar (``tar cf b.tar -C usb bundle``), read in place.

    The bundle may sit at the top of the archive or in one top-level directory.
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._tar = tarfile.open(path, "r:")
        except tarfile.ReadError as exc:
            raise BundleInvalid(f"{path} is not an uncompressed tar archive: {exc}") from None
        try:
            self._members = self._index()
        except BaseException:
            self._tar.close()
            raise

    def _index(self) -> dict[str, tarfile.TarInfo]:
        found: dict[str, tarfile.TarInfo] = {}
        count = 0
        try:
            for info in self._tar:
                count += 1
                if count > MAX_TAR_MEMBERS:
                    raise BundleInvalid(f"the tar holds more than {MAX_TAR_MEMBERS} entries")
                name = safe_member_name(info.name)
                if info.issym() or info.islnk():
                    raise BundleInvalid(f"the tar holds a link ({info.name!r} -> "
                                        f"{info.linkname!r}); bundles hold plain files")
                if info.isdev() or info.isfifo():
                    raise BundleInvalid(f"the tar holds a device or FIFO: {info.name!r}")
                if info.isdir():
                    continue
                if not info.isreg():
                    raise BundleInvalid(f"the tar holds an entry of unknown type: {info.name!r}")
                if name in found:
                    raise BundleInvalid(f"the tar holds {info.name!r} twice")
                found[name] = info
        except tarfile.TarError as exc:
            raise BundleInvalid(f"the tar is damaged or truncated: {exc}") from None
        tops = {n.split("/", 1)[0] for n in found}
        if "bundle.json" not in found and len(tops) == 1:
            prefix = tops.pop() + "/"
            found = {n[len(prefix):]: i for n, i in found.items() if n.startswith(prefix)}
        return found

    def size(self, rel: str) -> int | None:
        info = self._members.get(rel)
        return None if info is None else info.size

    def open(self, rel: str) -> IO[bytes]:
        reader = self._tar.extractfile(self._members[rel])
        if reader is None:  # pragma: no cover - only regular files are indexed
            raise BundleInvalid(f"{rel} cannot be read from the tar")
        return reader

    def close(self) -> None:
        self._tar.close()


def open_source(path: Path) -> BundleSource:
    """A directory or a ``.tar`` file holding a bundle."""
    if path.is_file():
        return TarSource(path)
    return DirSource(path)
