"""Supervises engine worker processes: start, health-check, restart with backoff, stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec

from appliance.kernel.tasks import TaskGroupOwner

log = logging.getLogger(__name__)


def self_command() -> list[str]:
    """How to run this program again: the frozen binary itself, or this interpreter."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "appliance"]


class EngineState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run: one model, its files (relative name → path) and its task."""

    name: str
    task: str  # "chat" | "embedding"
    files: dict[str, str]
    threads: int = 0
    context_tokens: int = 2048
    max_queue: int = 32


class EngineStatus(msgspec.Struct, kw_only=True):
    name: str
    task: str
    state: str
    pid: int | None
    port: int | None
    restarts: int
    last_error: str
    since: float


class EngineProcess:
    """One supervised worker. ``base_url`` is set only while the worker is ready."""

    def __init__(self, spec: EngineSpec, *, start_timeout_s: float, health_interval_s: float,
                 backoff_max_s: float) -> None:
        self.spec = spec
        self.token = secrets.token_urlsafe(24)
        self.state = EngineState.STARTING
        self.port: int | None = None
        self.restarts = 0
        self.last_error = ""
        self.since = time.time()
        self._proc: asyncio.subprocess.Process | None = None
        self._start_timeout = start_timeout_s
        self._health_interval = health_interval_s
        self._backoff_max = backoff_max_s
        self._stopping = False
        self._ever_ready = asyncio.Event()
        self._settled = asyncio.Event()  # ready or failed at least once

    @property
    def base_url(self) -> str | None:
        if self.state is EngineState.READY and self.port is not None:
            return f"http://127.0.0.1:{self.port}/v1"
        return None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def status(self) -> EngineStatus:
        return EngineStatus(name=self.spec.name, task=self.spec.task, state=self.state.value,
                            pid=self.pid, port=self.port, restarts=self.restarts,
                            last_error=self.last_error, since=self.since)

    def _set(self, state: EngineState, error: str = "") -> None:
        if state is not self.state:
            log.info("engine %s: %s -> %s%s", self.spec.name, self.state.value, state.value,
                     f" ({error})" if error else "")
        self.state = state
        self.since = time.time()
        if error:
            self.last_error = error
        if state in (EngineState.READY, EngineState.FAILED):
            self._settled.set()

    async def wait_settled(self, limit_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), limit_s)

    def _command(self) -> list[str]:
        cmd = [*self_command(), "engine", "--name", self.spec.name, "--task", self.spec.task,
               "--port", "0", "--threads", str(self.spec.threads),
               "--context-tokens", str(self.spec.context_tokens),
               "--max-queue", str(self.spec.max_queue)]
        for rel, path in self.spec.files.items():
            cmd += ["--file", f"{rel}={path}"]
        return cmd

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Keep the worker alive until ``stop``: the supervisor loop of one engine."""
        backoff = 0.5
        while not self._stopping:
            started = time.monotonic()
            error = await self._run_once(session)
            self.port = None
            if self._stopping:
                break
            # A worker that stayed up a while earns a fresh backoff.
            if time.monotonic() - started > 60:
                backoff = 0.5
            if error.startswith("load failed"):
                self._set(EngineState.FAILED, error)
            else:
                self._set(EngineState.RESTARTING, error)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
        self._set(EngineState.STOPPED)

    async def _run_once(self, session: aiohttp.ClientSession) -> str:
        threads = str(self.spec.threads or max(1, (os.cpu_count() or 2) // 2))
        # BLAS (the embedding model's matrix products) gets the engine's thread budget; its
        # default of one thread a core slows to a crawl when the gateway and llama.cpp compete.
        env = dict(os.environ, APPLIANCE_ENGINE_TOKEN=self.token, OPENBLAS_NUM_THREADS=threads,
                   OMP_NUM_THREADS=threads)
        self._proc = proc = await asyncio.create_subprocess_exec(
            *self._command(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=None, env=env, start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), self._start_timeout)
        except TimeoutError:
            await self._kill(proc)
            return f"load failed: no ready signal within {self._start_timeout:.0f} s"
        try:
            event = msgspec.json.decode(line) if line else {}
        except msgspec.DecodeError:
            event = {}
        if event.get("event") != "ready":
            await self._kill(proc)
            reason = event.get("error") or f"worker exited with status {proc.returncode}"
            return f"load failed: {reason}"
        self.port = int(event["port"])
        self._set(EngineState.READY)
        self._ever_ready.set()
        return await self._watch(proc, session)

    async def _watch(self, proc: asyncio.subprocess.Process,
                     session: aiohttp.ClientSession) -> str:
        """Return why the worker is no longer usable (exit or failed health checks)."""
        failures = 0
        url = f"http://127.0.0.1:{self.port}/health"
        headers = {"Authorization": f"Bearer {self.token}"}
        wait_exit = asyncio.ensure_future(proc.wait())
        try:
            while True:
                done, _ = await asyncio.wait({wait_exit}, timeout=self._health_interval)
                if done:
                    return f"worker exited with status {proc.returncode}"
                try:
                    timeout = aiohttp.ClientTimeout(total=max(self._health_interval, 5.0))
                    async with session.get(url, headers=headers, timeout=timeout) as resp:
                        failures = 0 if resp.status == 200 else failures + 1
                except (aiohttp.ClientError, TimeoutError):
                    failures += 1
                # A busy worker (long prompt) may answer late; 3 misses in a row means stuck.
                if failures >= 3:
                    await self._kill(proc)
                    return "worker stopped answering health checks"
        finally:
            wait_exit.cancel()

    async def _kill(self, proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Stop the worker cleanly (SIGTERM, then SIGKILL after a grace period)."""
        self._stopping = True
        if self._proc is not None:
            await self._kill(self._proc)


class EngineSupervisor:
    """All engines of this appliance, keyed by model name."""

    def __init__(self, *, start_timeout_s: float = 60.0, health_interval_s: float = 2.0,
                 backoff_max_s: float = 30.0) -> None:
        self.engines: dict[str, EngineProcess] = {}
        self._tasks = TaskGroupOwner("engines")
        self._session: aiohttp.ClientSession | None = None
        self._opts = dict(start_timeout_s=start_timeout_s, health_interval_s=health_interval_s,
                          backoff_max_s=backoff_max_s)

    async def start(self, specs: Sequence[EngineSpec]) -> None:
        """Start one supervised worker per spec (returns without waiting for them)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for spec in specs:
            await self.add(spec)

    async def add(self, spec: EngineSpec) -> EngineProcess:
        """Start (or replace) the engine for ``spec.name``."""
        assert self._session is not None, "start() first"
        old = self.engines.pop(spec.name, None)
        if old is not None:
            await old.stop()
        engine = EngineProcess(spec, **self._opts)
        self.engines[spec.name] = engine
        self._tasks.spawn(engine.run(self._session), name=spec.name)
        return engine

    async def remove(self, name: str) -> None:
        engine = self.engines.pop(name, None)
        if engine is not None:
            await engine.stop()

    def get(self, name: str) -> EngineProcess | None:
        return self.engines.get(name)

    def settled(self) -> bool:
        """True when every engine is ready or failed with a reason (for /ready)."""
        return all(e.state in (EngineState.READY, EngineState.FAILED)
                   or e.restarts > 0 for e in self.engines.values())

    async def wait_settled(self, limit_s: float) -> None:
        await asyncio.gather(*(e.wait_settled(limit_s) for e in self.engines.values()))

    async def close(self) -> None:
        """Stop every worker, then the supervisor tasks."""
        await asyncio.gather(*(e.stop() for e in self.engines.values()))
        await self._tasks.close()
        if self._session is not None:
            await self._session.close()
            self._session = None


def files_from_args(pairs: Sequence[str]) -> dict[str, Path]:
    """Parse ``rel=path`` command-line pairs into a mapping."""
    files: dict[str, Path] = {}
    for pair in pairs:
        rel, sep, path = pair.partition("=")
        if not sep:
            raise ValueError(f"--file takes REL=PATH, got {pair!r}")
        files[rel] = Path(path)
    return files
