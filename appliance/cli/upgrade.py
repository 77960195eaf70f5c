"""`appliance upgrade PATH` / `appliance upgrade --rollback`: swap the installed binary.

The new binary is verified (sha256 from ``PATH.sha256`` or from a bundle's ``bundle.json``),
run once (``NEW --version``), then renamed over the installed one; the one it replaces stays as
``foundry-appliance.previous`` for ``--rollback``. There is always a binary at the fixed path:
the previous one is kept through a hard link, and the swap itself is one ``rename``. State
migrations run when the new binary next starts.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import msgspec

from appliance.cli.common import fail
from appliance.cli.hostenv import run_host
from appliance.cli.service_unit import (
    BINARY_MODE,
    BINARY_PATH,
    PREVIOUS_PATH,
    SERVICE_NAME,
    UNIT_PATH,
    systemd_running,
    under,
)
from appliance.kernel.errors import ApplianceError

BINARY_NAME = "appliance"  # the name of the binary inside an upgrade bundle
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
VERSION_TIMEOUT_S = 120.0  # a one-file binary unpacks itself first


class UpgradeError(ApplianceError, ValueError):
    """The candidate binary is missing, does not match its digest, or does not run."""


class _FileEntry(msgspec.Struct):
    path: str
    sha256: str


class _UpgradeManifest(msgspec.Struct):
    """The part of ``bundle.json`` an upgrade reads (other fields are left to `bundle`)."""

    files: list[_FileEntry] = []


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "upgrade", help="replace the installed binary (keeps the previous for --rollback)",
        description=f"Verify a new appliance binary and swap it in at {BINARY_PATH} "
        "atomically; the replaced one is kept for --rollback. PATH is a binary with a "
        "sibling PATH.sha256 (sha256sum format), or a bundle directory whose bundle.json "
        f"lists a file named {BINARY_NAME!r}. Restarts the service when systemd runs it.")
    p.add_argument("path", type=Path, nargs="?", metavar="PATH",
                   help="new binary or bundle directory")
    p.add_argument("--sha256", metavar="HEX", help="expected digest (instead of PATH.sha256)")
    p.add_argument("--rollback", action="store_true",
                   help="swap back to the previous binary")
    p.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR",
                   help="staging root the appliance is installed under (default /)")
    p.add_argument("--no-restart", action="store_true",
                   help="do not restart the service after the swap")
    p.set_defaults(func=run)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_text(text: str, source: str) -> str:
    value = text.split()[0].lower() if text.split() else ""
    if not SHA256_RE.match(value):
        raise UpgradeError(f"{source} holds no sha256 digest")
    return value


def find_candidate(path: Path, sha256: str | None = None) -> tuple[Path, str]:
    """The new binary and the digest it must have."""
    if path.is_dir():
        manifest_path = path / "bundle.json"
        try:
            manifest = msgspec.json.decode(manifest_path.read_bytes(), type=_UpgradeManifest)
        except (OSError, msgspec.DecodeError) as exc:
            raise UpgradeError(f"{manifest_path}: not a readable bundle manifest ({exc})") from None
        for entry in manifest.files:
            if PurePosixPath(entry.path).name == BINARY_NAME:
                binary = (path / entry.path).resolve()
                if not binary.is_relative_to(path.resolve()):
                    raise UpgradeError(f"bundle file {entry.path!r} points outside the bundle")
                return binary, _digest_text(entry.sha256.removeprefix("sha256:"), entry.path)
        raise UpgradeError(f"bundle {path} has no file named {BINARY_NAME!r}")
    if not path.is_file():
        raise UpgradeError(f"{path} does not exist")
    if sha256:
        return path, _digest_text(sha256, "--sha256")
    sidecar = Path(f"{path}.sha256")
    if not sidecar.is_file():
        raise UpgradeError(f"no {sidecar} next to the binary; give --sha256 HEX")
    return path, _digest_text(sidecar.read_text(), str(sidecar))


def check_runs(binary: Path) -> str:
    """Run ``BINARY --version``; return the line it prints."""
    try:
        out = run_host([str(binary), "--version"], timeout=VERSION_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeError(f"{binary} does not run: {exc}") from None
    line = out.stdout.strip()
    if out.returncode != 0 or not line.startswith("appliance "):
        detail = (out.stderr.strip() or line)[-300:]
        raise UpgradeError(f"{binary} --version failed (exit {out.returncode}): {detail}")
    return line


def _keep_as(current: Path, keep: Path) -> None:
    """Make ``keep`` the same file as ``current`` (hard link, renamed into place)."""
    tmp = keep.with_name(f".{keep.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.link(current, tmp)
    os.replace(tmp, keep)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_upgrade(candidate: Path, expected: str, prefix: Path) -> str:
    """Verify, stage, test and swap in ``candidate``; return its version line."""
    actual = sha256_file(candidate)
    if actual != expected:
        raise UpgradeError(f"{candidate}: sha256 {actual} does not match {expected}")
    current = under(prefix, BINARY_PATH)
    current.parent.mkdir(parents=True, exist_ok=True)
    staged = current.with_name(f".{current.name}.new-{os.getpid()}")
    try:
        shutil.copyfile(candidate, staged)
        os.chmod(staged, BINARY_MODE)
        if sha256_file(staged) != expected:
            raise UpgradeError(f"copy of {candidate} in {staged.parent} is corrupt")
        line = check_runs(staged)
        if current.exists():
            _keep_as(current, under(prefix, PREVIOUS_PATH))
        os.replace(staged, current)
    finally:
        staged.unlink(missing_ok=True)
    _sync_dir(current.parent)
    return line


def rollback(prefix: Path) -> None:
    """Swap the previous binary back in; the replaced one becomes the new "previous"."""
    current, previous = under(prefix, BINARY_PATH), under(prefix, PREVIOUS_PATH)
    if not previous.is_file():
        raise UpgradeError(f"no previous binary at {previous} to roll back to")
    if current.exists():
        swap = current.with_name(f".{current.name}.rollback-{os.getpid()}")
        os.link(current, swap)
        os.replace(previous, current)
        os.replace(swap, previous)
    else:
        os.replace(previous, current)
    _sync_dir(current.parent)


def _restart(prefix: Path, skip: bool) -> None:
    running, _ = systemd_running()
    if (not skip and prefix.resolve() == Path("/") and running
            and under(prefix, UNIT_PATH).is_file()):
        out = run_host(["systemctl", "try-restart", SERVICE_NAME])
        if out.returncode == 0:
            print(f"upgrade: restarted {SERVICE_NAME}; state migrations run as it starts")
            return
        print(f"upgrade: warning: systemctl try-restart failed: {out.stderr.strip()}")
    print("upgrade: restart the appliance to run the installed binary; "
          "state migrations run as it starts")


def run(args: argparse.Namespace) -> int:
    try:
        if args.rollback:
            rollback(args.prefix)
            print(f"upgrade: rolled back {under(args.prefix, BINARY_PATH)}")
        else:
            if args.path is None:
                return fail("give PATH of the new binary, or --rollback", 2)
            candidate, expected = find_candidate(args.path, args.sha256)
            line = install_upgrade(candidate, expected, args.prefix)
            print(f"upgrade: installed {line} at {under(args.prefix, BINARY_PATH)}")
    except UpgradeError as exc:
        return fail(exc.message)
    except OSError as exc:
        return fail(f"upgrade failed: {exc}")
    _restart(args.prefix, args.no_restart)
    return 0
