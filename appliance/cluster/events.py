"""Progress of installs and deployments: per-host, per-step events as an async iterator.

A ``ProgressLog`` keeps every event of one run (so a late subscriber sees the whole story)
and fans new ones out to live followers; ``persist`` hands them to the state database so a
run started by the CLI can be followed through the server's SSE endpoint too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import msgspec

from appliance.store.state import StateStore

Status = Literal["started", "ok", "changed", "skipped", "failed", "warn", "info",
                 "would-change", "done"]
FINAL_RUN_STATES = ("success", "failed", "cancelled")


class ProgressEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One line of progress: host ``''`` is the run itself."""

    seq: int
    ts: float
    host: str = ""
    step: str = ""
    status: Status
    message: str = ""

    def line(self) -> str:
        """The CLI's live line: ``[host] step: status - message``."""
        where = f"[{self.host}] " if self.host else ""
        step = f"{self.step}: " if self.step else ""
        text = f"{where}{step}{self.status}"
        return f"{text} - {self.message}" if self.message else text


class ProgressLog:
    """The events of one run; ``follow()`` yields them all, then live ones until closed."""

    def __init__(self, stream: str,
                 persist: Callable[[str, ProgressEvent], Awaitable[None]] | None = None,
                 echo: Callable[[ProgressEvent], None] | None = None) -> None:
        self.stream = stream
        self.events: list[ProgressEvent] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._persist = persist
        self._echo = echo

    async def emit(self, status: Status, message: str = "", *, host: str = "",
                   step: str = "") -> ProgressEvent:
        event = ProgressEvent(seq=len(self.events) + 1, ts=time.time(), host=host, step=step,
                              status=status, message=message)
        self.events.append(event)
        if self._echo is not None:
            self._echo(event)
        if self._persist is not None:
            await self._persist(self.stream, event)
        async with self._changed:
            self._changed.notify_all()
        return event

    async def close(self) -> None:
        self.closed = True
        async with self._changed:
            self._changed.notify_all()

    async def follow(self, after: int = 0) -> AsyncIterator[ProgressEvent]:
        """Every event with ``seq > after``, then new ones as they come, until closed."""
        sent = after
        while True:
            while sent < len(self.events):
                sent += 1
                yield self.events[sent - 1]
            if self.closed:
                return
            async with self._changed:
                if sent >= len(self.events) and not self.closed:
                    await self._changed.wait()


async def store_event(store: StateStore, stream: str, event: ProgressEvent) -> None:
    """Append one event to ``progress_events``."""
    await store.execute(
        "INSERT INTO progress_events (stream, seq, ts, host, step, status, message)"
        " VALUES (?,?,?,?,?,?,?)",
        (stream, event.seq, event.ts, event.host, event.step, event.status, event.message))


async def stored_events(store: StateStore, stream: str, after: int = 0) -> list[ProgressEvent]:
    rows = await store.fetchall(
        "SELECT * FROM progress_events WHERE stream=? AND seq>? ORDER BY seq", (stream, after))
    return [ProgressEvent(seq=r["seq"], ts=r["ts"], host=r["host"], step=r["step"],
                          status=r["status"], message=r["message"]) for r in rows]


async def follow_stored(store: StateStore, stream: str,
                        is_final: Callable[[], Awaitable[bool]], *,
                        poll_s: float = 0.3) -> AsyncIterator[ProgressEvent]:
    """Follow a run another process drives: replay stored events, poll until it ends."""
    after = 0
    while True:
        final = await is_final()
        for event in await stored_events(store, stream, after):
            after = event.seq
            yield event
        if final:
            return
        await asyncio.sleep(poll_s)
