"""`appliance install-service` / `uninstall-service`: run the binary as a systemd service.

Install is an ordered list of idempotent steps: copy the binary, create the system user, make
the data directory (0750, owned by that user), write the hardened unit, then enable and start
it. Where systemd is not PID 1 the files are still written and the command says so.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
from pathlib import Path, PurePosixPath

from appliance.buildinfo import is_frozen
from appliance.cli.common import fail
from appliance.cli.hostenv import run_host
from appliance.cli.service_unit import (
    BINARY_MODE,
    BINARY_PATH,
    DATA_DIR_MODE,
    DEFAULT_DATA_DIR,
    DEFAULT_USER,
    PREVIOUS_PATH,
    SERVICE_NAME,
    UNIT_MODE,
    UNIT_PATH,
    render_unit,
    systemd_running,
    under,
    unit_data_dir,
)
from appliance.kernel.errors import ConfigError
from appliance.settings import load_settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-service", help="install this binary as a systemd service",
        description=f"Copy this binary to {BINARY_PATH}, create a system user, the data "
        f"directory (mode 0750) and a hardened unit {UNIT_PATH}, then enable and start it. "
        "Without systemd as PID 1 the files are written and a warning says so. With "
        "--prefix other than / everything is rendered below that directory (no user is "
        "created, systemctl is not called).")
    p.add_argument("--data-dir", type=PurePosixPath, default=DEFAULT_DATA_DIR, metavar="DIR",
                   help=f"data directory of the service (default {DEFAULT_DATA_DIR})")
    p.add_argument("--user", default=DEFAULT_USER, metavar="NAME",
                   help=f"system user the service runs as (default {DEFAULT_USER})")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="address the service listens on (default 127.0.0.1:8080)")
    p.add_argument("--config", type=PurePosixPath, metavar="FILE",
                   help="settings file the service reads (outside home directories)")
    p.add_argument("--starter-bundle", type=PurePosixPath, metavar="DIR",
                   help="bundle imported on first start (outside home directories)")
    p.add_argument("--binary", type=Path, metavar="PATH",
                   help="binary to install (default: this frozen binary)")
    p.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR",
                   help="staging root to render into (default /, the real system)")
    p.add_argument("--no-start", action="store_true", help="enable but do not start now")
    p.set_defaults(func=install)

    u = sub.add_parser(
        "uninstall-service", help="remove the systemd service (keeps data)",
        description="Stop and disable the service, remove its unit and binary. The data "
        "directory and the user stay unless --purge is given.")
    u.add_argument("--purge", action="store_true",
                   help="also delete the data directory and the system user")
    u.add_argument("--user", default=DEFAULT_USER, metavar="NAME",
                   help=f"system user to remove with --purge (default {DEFAULT_USER})")
    u.add_argument("--prefix", type=Path, default=Path("/"), metavar="DIR",
                   help="staging root the service was rendered into (default /)")
    u.set_defaults(func=uninstall)


def _say(message: str) -> None:
    print(f"install-service: {message}")


def _binary_source(args: argparse.Namespace) -> Path | None:
    if args.binary is not None:
        return Path(args.binary)
    if is_frozen():
        return Path(sys.executable)
    return None


def copy_binary(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` atomically (temp file + rename); False when the same."""
    if target.exists() and target.resolve() == source.resolve():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.chmod(tmp, BINARY_MODE)
    os.replace(tmp, target)
    return True


def ensure_user(name: str, home: PurePosixPath) -> str:
    """Create the system user unless it exists; say which."""
    try:
        pwd.getpwnam(name)
        return f"user {name} exists"
    except KeyError:
        pass
    out = run_host(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", str(home), "--shell", "/usr/sbin/nologin", name])
    if out.returncode != 0:
        raise ConfigError(f"useradd {name} failed: {out.stderr.strip() or out.returncode}")
    return f"created system user {name}"


def make_data_dir(path: Path, user: str | None) -> None:
    """The data directory with mode 0750, owned by ``user`` when given."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DATA_DIR_MODE)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def write_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` atomically with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _systemctl(*args: str) -> str | None:
    out = run_host(["systemctl", *args])
    if out.returncode != 0:
        return f"systemctl {' '.join(args)} failed: {out.stderr.strip() or out.returncode}"
    return None


def install(args: argparse.Namespace) -> int:
    real = args.prefix.resolve() == Path("/")
    source = _binary_source(args)
    if source is None:
        return fail("install-service copies the frozen binary; this is a Python checkout. "
                    "Build it with `make dist`, or pass --binary dist/appliance")
    if not source.is_file():
        return fail(f"binary {source} does not exist")
    if real and os.geteuid() != 0:
        return fail("install-service changes the system: run it as root (sudo)")
    try:
        config = under(args.prefix, args.config) if args.config else None
        if config is not None and real and not config.is_file():
            return fail(f"config file {config} does not exist")
        # the unit's stop timeout must outlast the server's own drain
        shutdown_s = load_settings(config if config and config.is_file() else None,
                                   environ={}).server.shutdown_timeout_s
        binary = under(args.prefix, BINARY_PATH)
        _say(f"binary {binary}" + ("" if copy_binary(source, binary) else " (already there)"))
        owner: str | None = None
        if real:
            _say(ensure_user(args.user, args.data_dir))
            owner = args.user
        else:
            _say(f"--prefix {args.prefix}: not creating user {args.user}")
        data_dir = under(args.prefix, args.data_dir)
        make_data_dir(data_dir, owner)
        _say(f"data dir {data_dir} (mode 0750{', owner ' + owner if owner else ''})")
        unit = under(args.prefix, UNIT_PATH)
        write_file(unit, render_unit(user=args.user, data_dir=args.data_dir, listen=args.listen,
                                     shutdown_timeout_s=shutdown_s, config=args.config,
                                     starter_bundle=args.starter_bundle), UNIT_MODE)
        _say(f"unit {unit}")
    except (OSError, ConfigError) as exc:
        return fail(str(exc))
    if not real:
        _say("rendered only (--prefix is not /); systemctl not called")
        return 0
    running, why = systemd_running()
    if not running:
        print(f"install-service: warning: systemd is not running here ({why}); the files are "
              f"in place, start it on a systemd host with: systemctl daemon-reload && "
              f"systemctl enable --now {SERVICE_NAME}", file=sys.stderr)
        return 0
    enable = ["enable", SERVICE_NAME] if args.no_start else ["enable", "--now", SERVICE_NAME]
    for step in (["daemon-reload"], enable):
        if (error := _systemctl(*step)) is not None:
            return fail(error)
    _say(f"{SERVICE_NAME} enabled" + ("" if args.no_start else " and started"))
    return 0


def uninstall(args: argparse.Namespace) -> int:
    real = args.prefix.resolve() == Path("/")
    if real and os.geteuid() != 0:
        return fail("uninstall-service changes the system: run it as root (sudo)")
    unit = under(args.prefix, UNIT_PATH)
    data_dir = unit_data_dir(unit.read_text()) if unit.is_file() else None
    running, why = systemd_running() if real else (False, "--prefix is not /")
    if running and unit.is_file():
        if (error := _systemctl("disable", "--now", SERVICE_NAME)) is not None:
            return fail(error)
    elif real:
        print(f"uninstall-service: warning: systemd is not running here ({why}); removing "
              "the files only", file=sys.stderr)
    for path in (unit, under(args.prefix, BINARY_PATH), under(args.prefix, PREVIOUS_PATH)):
        if path.exists():
            path.unlink()
            print(f"uninstall-service: removed {path}")
    if running:
        _systemctl("daemon-reload")
    if not args.purge:
        if data_dir is not None:
            print(f"uninstall-service: kept data in {under(args.prefix, data_dir)} "
                  "(--purge deletes it)")
        return 0
    if data_dir is not None and under(args.prefix, data_dir).exists():
        shutil.rmtree(under(args.prefix, data_dir))
        print(f"uninstall-service: deleted {under(args.prefix, data_dir)}")
    if real:
        try:
            pwd.getpwnam(args.user)
        except KeyError:
            return 0
        out = run_host(["userdel", args.user])
        if out.returncode != 0:
            return fail(f"userdel {args.user} failed: {out.stderr.strip()}")
        print(f"uninstall-service: removed user {args.user}")
    return 0
