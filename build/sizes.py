"""Print the biggest pieces of a frozen build and refuse CUDA/NVIDIA libraries inside it.

    python build/sizes.py dist/appliance [--top 15]
    python build/sizes.py dist/appliance-onedir [--top 15]

Sizes are as stored (compressed in a one-file build). Python modules are summed per top-level
package ("py:numpy"); every other file counts on its own.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
from pathlib import Path

from PyInstaller.archive.readers import CArchiveReader, NotAnArchiveError
from PyInstaller.loader.pyimod01_archive import ArchiveReadError

FORBIDDEN = re.compile(r"(cuda|cublas|cudnn|nccl|nvrtc|libnv|torch)", re.IGNORECASE)


def archive_pieces(exe: Path, sizes: collections.Counter[str]) -> None:
    """Add the entries of a PyInstaller executable's embedded archive to ``sizes``."""
    try:
        pkg = CArchiveReader(str(exe))
    except (ArchiveReadError, OSError):
        return
    for name, (_offset, length, _full, _compressed, typecode) in pkg.toc.items():
        if typecode == "z":  # the PYZ of byte-compiled modules: split it per package
            try:
                pyz = pkg.open_embedded_archive(name)
            except NotAnArchiveError:
                sizes[name] += length
                continue
            for module, (_kind, _pos, mlen) in pyz.toc.items():
                sizes["py:" + module.split(".")[0]] += mlen
        else:
            sizes[name] += length


def folder_pieces(root: Path, sizes: collections.Counter[str]) -> None:
    """Add every file of a one-folder build; the executable's archive is split open."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = Path(dirpath) / f
            if path.is_symlink():
                continue
            if path.parent == root and os.access(path, os.X_OK):
                archive_pieces(path, sizes)
            else:
                sizes[str(path.relative_to(root))] += path.stat().st_size


def total_size(path: Path) -> int:
    """Bytes on disk of a file or a folder (symlinks not followed)."""
    if path.is_file():
        return path.stat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, fs in os.walk(path) for f in fs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="dist/appliance or a one-folder build")
    parser.add_argument("--top", type=int, default=15, help="how many pieces to show")
    args = parser.parse_args()
    sizes: collections.Counter[str] = collections.Counter()
    if args.path.is_dir():
        folder_pieces(args.path, sizes)
    else:
        archive_pieces(args.path, sizes)
    total = total_size(args.path)
    print(f"{args.path}: {total / 2**20:.1f} MiB; biggest pieces (as stored):")
    for name, size in sizes.most_common(args.top):
        print(f"  {size / 2**20:8.2f} MiB  {name}")
    bad = sorted(n for n in sizes if FORBIDDEN.search(os.path.basename(n)))
    if bad:
        print("error: CUDA/NVIDIA pieces inside the build: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
