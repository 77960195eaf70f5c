"""The checks behind `appliance doctor`: each looks at one thing on this host and says why.

Every check returns a ``Check``; ``fail`` means `appliance serve` would not work as configured,
``warn`` that it would work with a limitation, ``info`` a fact worth knowing.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import http.client
import ipaddress
import os
import shutil
import socket
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from appliance.cli.hostenv import run_host
from appliance.settings import Settings

Status = Literal["ok", "info", "warn", "fail"]
GiB = 2**30
DISK_FAIL_BYTES = 1 * GiB
DISK_WARN_BYTES = 10 * GiB
# the portable llama.cpp build (GGML_NATIVE=OFF) is compiled for these instructions
LLAMA_CPU_FLAGS = ("avx2", "fma", "f16c")
PRIVATE_SUFFIXES = (".local", ".lan", ".internal", ".home.arpa", ".localdomain")


class Check(msgspec.Struct, frozen=True):
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(data_dir: Path) -> Check:
    """The data directory exists and is writable, or can be created."""
    if data_dir.exists() and not data_dir.is_dir():
        return Check("data dir", "fail", f"{data_dir} exists and is not a directory")
    where = data_dir if data_dir.is_dir() else _existing_ancestor(data_dir)
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("data dir", "fail", f"cannot write in {where}: {exc.strerror or exc}")
    if where != data_dir:
        return Check("data dir", "ok", f"{data_dir} does not exist yet; {where} is writable")
    return Check("data dir", "ok", f"{data_dir} is writable")


def check_disk(data_dir: Path) -> Check:
    """Free space where the data directory lives (models and blobs need room)."""
    usage = shutil.disk_usage(_existing_ancestor(data_dir))
    detail = f"{usage.free / GiB:.1f} GiB free of {usage.total / GiB:.1f} GiB"
    if usage.free < DISK_FAIL_BYTES:
        return Check("free disk", "fail", detail + " (need at least 1 GiB)")
    if usage.free < DISK_WARN_BYTES:
        return Check("free disk", "warn", detail + " (models need more than 10 GiB)")
    return Check("free disk", "ok", detail)


def _answers_health(host: str, port: int) -> bool:
    conn = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def check_port(host: str, port: int) -> Check:
    """The listen address can be bound (or a running appliance already answers on it)."""
    name = f"port {host}:{port}"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if _answers_health(host, port):
                    return Check(name, "ok", "in use by a running server that answers /health")
                return Check(name, "fail", "in use by another program")
            if exc.errno == errno.EACCES:
                return Check(name, "fail", "not allowed (ports below 1024 need privileges)")
            return Check(name, "fail", f"cannot bind: {exc.strerror or exc}")
    return Check(name, "ok", "free")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's feature flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def check_cpu(flags: set[str]) -> Check:
    """The CPU runs the portable llama.cpp build; AVX-512 and AMX are reported."""
    if not flags:
        return Check("cpu", "warn", "cannot read /proc/cpuinfo flags")
    have: list[str] = [f for f in ("avx2", "avx512f") if f in flags]
    if any(f.startswith("amx") for f in flags):
        have.append("amx")
    detail = f"{os.cpu_count()} cores; " + (", ".join(have) or "no avx2/avx512f/amx")
    missing = [f for f in LLAMA_CPU_FLAGS if f not in flags]
    if missing:
        return Check("cpu", "fail",
                     detail + f"; missing {', '.join(missing)} needed by the built-in llama.cpp")
    return Check("cpu", "ok", detail)


def check_gpu(dev: Path = Path("/dev")) -> Check:
    """NVIDIA or AMD GPUs visible to this host (the appliance runs on CPU without them)."""
    found: list[str] = []
    nvidia = sorted(glob.glob(str(dev / "nvidia[0-9]*")))
    if nvidia:
        found.append(f"{len(nvidia)} NVIDIA device(s)")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = run_host([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           timeout=10)
            names = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
            found.append("nvidia-smi: " + ("; ".join(names) or f"exit {out.returncode}"))
        except (OSError, TimeoutError) as exc:
            found.append(f"nvidia-smi failed: {exc}")
    if (dev / "kfd").exists():
        found.append("AMD ROCm (/dev/kfd)")
    if not found:
        return Check("gpu", "info", "none found (CPU inference only)")
    return Check("gpu", "info", ", ".join(found))


def _state_query(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read-only query on an existing state database; never creates or migrates it."""
    path = data_dir / "state.db"
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    try:
        return list(conn.execute(sql))
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def check_starter(settings: Settings) -> Check:
    """The starter bundle is there for a first start (not needed once models exist)."""
    bundle = settings.starter_bundle_path
    if (bundle / "bundle.json").is_file():
        return Check("starter bundle", "ok", str(bundle))
    rows = _state_query(settings.data_path, "SELECT count(*) FROM models")
    if rows and rows[0][0]:
        return Check("starter bundle", "ok", f"not needed: {rows[0][0]} model(s) imported")
    return Check("starter bundle", "warn",
                 f"none at {bundle}; serve starts without models until a bundle is imported")


def is_private_host(host: str) -> bool:
    """Loopback, private or link-local addresses and local-only names (no DNS is asked)."""
    host = host.strip("[]").lower()
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost" or "." not in host or host.endswith(PRIVATE_SUFFIXES)
    return addr.is_private or addr.is_loopback or addr.is_link_local


def check_upstreams(settings: Settings) -> Check:
    """No configured upstream points outside the site (config file and state)."""
    urls = {u.name: u.base_url for u in settings.upstreams}
    urls.update({str(n): str(u) for n, u in
                 _state_query(settings.data_path, "SELECT name, base_url FROM upstreams")})
    public = sorted(f"{n} ({u})" for n, u in urls.items()
                    if not is_private_host(urlsplit(u).hostname or ""))
    if public:
        return Check("outbound", "warn",
                     "upstreams outside the site network: " + ", ".join(public))
    return Check("outbound", "ok", f"{len(urls)} upstream(s), all on private addresses"
                 if urls else "no upstreams configured; nothing dials out")


@contextlib.contextmanager
def _record_lookups() -> Iterator[list[str]]:
    """Refuse and record name lookups and outbound connects made inside the block."""
    seen: list[str] = []
    saved: dict[str, Any] = {n: getattr(socket, n) for n in
                             ("getaddrinfo", "gethostbyname", "gethostbyname_ex")}
    saved_connect = socket.socket.connect

    def refuse(what: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append(f"{what}{args[:2]!r}")
            raise OSError(f"doctor: {what} refused")
        return call

    for name in saved:
        setattr(socket, name, refuse(name))
    socket.socket.connect = refuse("connect")  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        for name, fn in saved.items():
            setattr(socket, name, fn)
        socket.socket.connect = saved_connect  # type: ignore[method-assign]


def check_startup_lookups(settings: Settings) -> Check:
    """Building the application makes no DNS lookup; the listen address is no name."""
    from appliance.app import build_app

    with _record_lookups() as seen:
        build_app(settings)
    host, _ = settings.host_port
    if seen:
        return Check("no dns at start", "fail", "start-up looked up: " + ", ".join(seen))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            return Check("no dns at start", "warn", f"listen host {host!r} is a name: binding "
                         "it asks the resolver; use an IP address")
    return Check("no dns at start", "ok", "building the app made no lookups or connections; "
                 "upstreams are dialled only when a request is routed to them")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order the report shows them."""
    host, port = settings.host_port
    return [
        check_data_dir(settings.data_path),
        check_disk(settings.data_path),
        check_port(host, port),
        check_cpu(cpu_flags()),
        check_gpu(),
        check_starter(settings),
        check_upstreams(settings),
        check_startup_lookups(settings),
    ]
