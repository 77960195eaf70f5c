"""What this program is: version, build date and git revision.

A frozen build reads them from ``_build.json``, written by ``appliance.spec`` at build time and
bundled next to this module. A checkout asks ``git``; what cannot be known reads "unknown".
"""

from __future__ import annotations

import datetime
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import msgspec

from appliance import __version__

BUILD_FILE = Path(__file__).with_name("_build.json")
UNKNOWN = "unknown"


class BuildInfo(NamedTuple):
    """The three facts ``appliance --version`` prints."""

    version: str
    build_date: str
    git_rev: str


class _BuildFile(msgspec.Struct, frozen=True):
    version: str
    build_date: str
    git_rev: str


def is_frozen() -> bool:
    """True inside the PyInstaller binary."""
    return bool(getattr(sys, "frozen", False))


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_revision(repo: Path) -> str:
    """Short commit id of ``repo``, with ``+dirty`` when tracked files changed; or "unknown"."""
    if not (repo / ".git").exists():
        return UNKNOWN
    rev = _git("rev-parse", "--short=12", "HEAD", cwd=repo)
    if not rev:
        return UNKNOWN
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=repo)
    return f"{rev}+dirty" if dirty else rev


def build_date_now() -> str:
    """UTC now, or ``$SOURCE_DATE_EPOCH`` for reproducible builds, as ISO 8601."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_build_file(path: Path, repo: Path) -> BuildInfo:
    """Record this checkout's facts for a build (called by ``appliance.spec``)."""
    info = BuildInfo(__version__, build_date_now(), git_revision(repo))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(_BuildFile(*info)) + b"\n")
    return info


@functools.lru_cache(maxsize=1)
def build_info() -> BuildInfo:
    """(version, build date, git revision) of the running program."""
    if BUILD_FILE.is_file():
        try:
            data = msgspec.json.decode(BUILD_FILE.read_bytes(), type=_BuildFile)
            return BuildInfo(data.version, data.build_date, data.git_rev)
        except (OSError, msgspec.DecodeError):
            pass
    if is_frozen():
        return BuildInfo(__version__, UNKNOWN, UNKNOWN)
    return BuildInfo(__version__, UNKNOWN, git_revision(Path(__file__).resolve().parent.parent))


def version_line() -> str:
    """The one line ``appliance --version`` prints."""
    info = build_info()
    kind = "binary" if is_frozen() else "checkout"
    return f"appliance {info.version} (built {info.build_date}, git {info.git_rev}, {kind})"
