"""Peers for `bench/gateway.py --peers`: LiteLLM proxy and TensorZero on loopback.

Both live in a side venv (~/.cache/foundry-appliance/bench-peers), reused when it already holds
the pinned versions. Creating it is a connected-side step that downloads from PyPI; running the
peers is not: each gets a scrubbed environment (no proxies, no provider keys, no observability
URLs) and a config that turns its outbound features off, and talks only to the zero-latency
upstream on 127.0.0.1.

- LiteLLM proxy: `model_list` maps `bench` to `openai/bench` at the upstream's `api_base`; a
  master key; `LITELLM_LOCAL_MODEL_COST_MAP=True` (otherwise it fetches the cost map from GitHub
  at start) and `LITELLM_TELEMETRY_DISABLED=True`; no database.
- TensorZero: the PyPI wheel embeds the Rust gateway; `tensorzero._start_http_gateway` (what
  `patch_openai_client` uses) serves its OpenAI-compatible API on a loopback port. Config: model
  `bench` with an `openai` provider at the upstream, `api_key_location = "none"`, observability
  (ClickHouse) off, pseudonymous usage analytics ("howdy") off. No auth, no database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

VENV = Path.home() / ".cache" / "foundry-appliance" / "bench-peers"
# Checked with `pip index versions` (litellm 1.110.2 is listed, but the resolver settles on
# 1.108.7 alongside tensorzero's pins); tensorzero 2026.6.0 is its last release.
REQUIREMENTS = ["litellm[proxy]==1.108.7", "tensorzero==2026.6.0"]
MARKER = VENV / "bench-peers-requirements.txt"

# Runs inside the side venv: start TensorZero's embedded HTTP gateway, publish its base URL in
# a file, serve until SIGTERM, then close the gateway.
TENSORZERO_MAIN = """
import signal, sys, threading
import tensorzero
gateway = tensorzero._start_http_gateway(config_file=sys.argv[1], clickhouse_url=None,
                                         postgres_url=None, valkey_url=None, async_setup=False)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(gateway.base_url)
import os; os.replace(sys.argv[2] + ".tmp", sys.argv[2])
stop.wait()
gateway.close()
"""


class PeerError(RuntimeError):
    """A peer could not be set up or did not answer; the message says why."""


@dataclass
class Peer:
    name: str
    url: str  # the chat-completions URL
    key: str  # sent as the bearer token
    model: str  # the `model` field the peer routes to the upstream


def ensure_venv() -> Path:
    """The side venv's bin folder, installing the pinned peers on first use."""
    if MARKER.is_file() and MARKER.read_text().split() == REQUIREMENTS:
        print(f"peers: reusing {VENV} ({', '.join(REQUIREMENTS)})", flush=True)
        return VENV / "bin"
    print(f"peers: connected-side step: creating {VENV} and downloading "
          f"{' '.join(REQUIREMENTS)} from PyPI (the peers themselves run offline)", flush=True)
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", *REQUIREMENTS])
    if pip.returncode != 0:
        raise SystemExit(f"peers: pip install into {VENV} failed (exit {pip.returncode})")
    MARKER.write_text("\n".join(REQUIREMENTS) + "\n")
    return VENV / "bin"


def offline_env(**extra: str) -> dict[str, str]:
    """The parent environment without proxies, provider keys or peer settings, plus `extra`."""
    drop = ("LITELLM_", "TENSORZERO_", "OPENAI_", "ANTHROPIC_", "OTEL_", "APPLIANCE_",
            "DATABASE_URL", "REDIS_")
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(drop) and not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def probe(peer: Peer, proc: subprocess.Popen[bytes], log: Path, body: bytes,
          timeout: float) -> None:
    """Wait until `peer` answers the bench request `body` with choices, or raise PeerError."""
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"{peer.name} exited with {proc.returncode} before answering:\n"
                            f"{log_tail(log)}")
        req = urllib.request.Request(peer.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {peer.key}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if b'"choices"' in resp.read():
                    return
                last = "answer without choices"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:300]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.25)
    raise PeerError(f"{peer.name} did not answer within {timeout:.0f}s (last: {last}):\n"
                    f"{log_tail(log)}")


def stop(name: str, proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait; SIGKILL the process group only if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"peers: {name} ignored SIGTERM for 30s; killing it", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return
    with contextlib.suppress(ProcessLookupError):  # leftovers in its session, if any
        os.killpg(proc.pid, signal.SIGKILL)
    # uvicorn (LiteLLM) re-raises the SIGTERM it handled after a graceful shutdown
    how = "cleanly" if proc.returncode in (0, -signal.SIGTERM) else "with an error"
    print(f"peers: {name} stopped {how} on SIGTERM (exit {proc.returncode})", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_litellm(bindir: Path, upstream_port: int, work: Path) -> tuple[
        Peer, subprocess.Popen[bytes], Path]:
    port, key = free_port(), "sk-bench-peer"
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: unused\n"
        "general_settings:\n"
        f"  master_key: {key}\n")
    log = work / "litellm.log"
    env = offline_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY_DISABLED="True",
                      LITELLM_LOG="ERROR")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bindir / "litellm"), "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", "1"],
            env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Peer("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", key, "bench"), \
        proc, log


def start_tensorzero(bindir: Path, upstream_port: int, work: Path) -> tuple[
        Peer, subprocess.Popen[bytes], Path]:
    config = work / "tensorzero.toml"
    config.write_text(
        "[gateway]\n"
        "disable_pseudonymous_usage_analytics = true\n"
        "[gateway.observability]\n"
        "enabled = false\n"
        "[models.bench]\n"
        'routing = ["zero"]\n'
        "[models.bench.providers.zero]\n"
        'type = "openai"\n'
        f'api_base = "http://127.0.0.1:{upstream_port}/v1/"\n'
        'model_name = "bench"\n'
        'api_key_location = "none"\n')
    log, url_file = work / "tensorzero.log", work / "tensorzero.url"
    env = offline_env(TENSORZERO_DISABLE_PSEUDONYMOUS_USAGE_ANALYTICS="1", RUST_LOG="warn")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bindir / "python"), "-c", TENSORZERO_MAIN, str(config), str(url_file)],
            env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while not url_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop("tensorzero", proc)
            raise PeerError(f"tensorzero gateway did not start:\n{log_tail(log)}")
        time.sleep(0.1)
    base = url_file.read_text().strip().rstrip("/")
    if not base.startswith("http://127.0.0.1:"):
        stop("tensorzero", proc)
        raise PeerError(f"tensorzero bound {base}, not loopback")
    return Peer("tensorzero", f"{base}/chat/completions", "unused",
                "tensorzero::model_name::bench"), proc, log


STARTERS = {"litellm": start_litellm, "tensorzero": start_tensorzero}


@contextlib.contextmanager
def running(name: str, bindir: Path, upstream_port: int, work: Path,
            body: Callable[[str], str]) -> Iterator[Peer]:
    """Start peer `name` against the upstream, wait until it answers `body(model)`, stop it
    afterwards."""
    peer, proc, log = STARTERS[name](bindir, upstream_port, work)
    try:
        probe(peer, proc, log, body(peer.model).encode(), timeout=180)
        print(f"peers: {name} answering at {peer.url}", flush=True)
        yield peer
    finally:
        stop(name, proc)
