"""Shared fixtures: a socket guard, fake upstreams, the in-process app and a real server."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.app import build_app
from appliance.settings import default_starter_bundle, load_settings

REPO = Path(__file__).resolve().parent.parent
# test hosts (tests/cluster/testhosts.py): sshd in network namespaces, private /30s in here
TEST_HOST_NET = ipaddress.ip_network("10.250.0.0/16")
_real_connect = socket.socket.connect


def _allowed(address: Any) -> bool:
    if isinstance(address, str | bytes):  # unix sockets
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        ip = ipaddress.ip_address(host)
        return ip.is_loopback or ip in TEST_HOST_NET
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed(address):
        raise PermissionError(f"tests may not connect to {address!r} (loopback only)")
    return _real_connect(self, address)


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Any]:
    """Tests run on uvloop, like the server (its transports differ from asyncio's)."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True, scope="session")
def _deny_network() -> Iterator[None]:
    """Every test runs air-gapped: only loopback connections are allowed."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def starter_bundle() -> Path:
    """The starter bundle built by `make bundle` (the README's first command builds it)."""
    path = Path(os.environ.get("APPLIANCE_TEST_STARTER_BUNDLE", default_starter_bundle()))
    if not (path / "bundle.json").exists():
        pytest.fail(f"no starter bundle at {path}: build it with `make bundle`")
    return path


# --- in-process appliance with engines off, for gateway behaviour -----------------------------


AppFactory = Callable[..., Any]


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """Start the appliance in-process (no local engines); returns a TestClient factory."""
    clients: list[TestClient[Any, Any]] = []

    async def start(config: dict[str, Any] | None = None) -> TestClient[Any, Any]:
        raw: dict[str, Any] = {"data_dir": str(tmp_path / "data"),
                               "starter_bundle": str(tmp_path / "no-bundle"),
                               "engine": {"enabled": False},
                               "metrics": {"flush_interval_s": 0.05}}
        for key, value in (config or {}).items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        settings = load_settings(overrides=raw, environ={})
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(settings)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def start_app(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


# --- a real `appliance serve` process -----------------------------------------------------------


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, data_dir: Path, log: Path):
        self.proc = proc
        self.url = url
        self.data_dir = data_dir
        self.log = log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def appliance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance", *args]


def spawn_server(data_dir: Path, *, config: Path | None = None, starter: Path | None = None,
                 env: dict[str, str] | None = None, wait_ready: bool = True,
                 timeout: float = 120) -> ServerProcess:
    """Run `appliance serve` on a free port and wait until /ready answers 200."""
    port = free_port()
    log = data_dir.parent / f"serve-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    args = ["serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    if config is not None:
        args += ["--config", str(config)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    full_env["APPLIANCE_ENGINE__THREADS"] = "1"
    if starter is not None:
        full_env["APPLIANCE_STARTER_BUNDLE"] = str(starter)
    full_env.update(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(appliance_cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                env=full_env, cwd=str(data_dir.parent))
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", data_dir, log)
    if wait_ready:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.logs()}")
            with contextlib.suppress(OSError):
                import urllib.request

                with urllib.request.urlopen(server.url + "/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return server
            time.sleep(0.2)
        server.stop()
        raise AssertionError(f"server not ready within {timeout} s:\n{server.logs()}")
    return server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory,
                starter_bundle: Path) -> Iterator[ServerProcess]:
    """One real appliance with the starter models, shared by the tests that only read."""
    root = tmp_path_factory.mktemp("live")
    server = spawn_server(root / "data", starter=starter_bundle)
    yield server
    code = server.stop()
    assert code == 0, server.logs()


def create_key(data_dir: Path, *extra: str) -> str:
    out = subprocess.run(appliance_cmd("keys", "create", "--data-dir", str(data_dir),
                                       "--name", "test", "--json", *extra),
                         capture_output=True, text=True, check=True)
    import json

    return str(json.loads(out.stdout)["key"])


@pytest.fixture(scope="session")
def live_key(live_server: ServerProcess) -> str:
    return create_key(live_server.data_dir, "--admin")


async def read_sse(resp: aiohttp.ClientResponse) -> list[bytes]:
    """The data payloads of a server-sent event stream."""
    raw = await resp.read()
    return [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
