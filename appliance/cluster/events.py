"""Progress of installs and deployments: per-host, per-step events as an async iterator.

A ``ProgressLog`` keeps every event of one run (so a late subscriber sees the whole story)
and fans new ones out to live followers at once; ``persist`` hands them to the state database
so a run started by the CLI can be followed through the server's SSE endpoint too.

Events are stored in batches, one transaction each (group commit): ``emit`` does not wait for
the database. One write per event, awaited by the step that emitted it, queued every host of a
run behind a single writer (20 hosts: ~60 ms per event, a third of the run). A batch is written
as soon as the previous one commits, in ``seq`` order, so readers of the table never see a gap
and lag by about one write; ``flush`` waits until everything emitted so far is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import msgspec

from appliance.store.state import StateStore

log = logging.getLogger(__name__)

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
                 persist: Callable[[str, list[ProgressEvent]], Awaitable[None]] | None = None,
                 echo: Callable[[ProgressEvent], None] | None = None) -> None:
        self.stream = stream
        self.events: list[ProgressEvent] = []
        self.closed = False
        self._changed = asyncio.Condition()
        self._persist = persist
        self._echo = echo
        self._pending: list[ProgressEvent] = []
        self._writer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None  # a failed write not yet raised

    async def emit(self, status: Status, message: str = "", *, host: str = "",
                   step: str = "") -> ProgressEvent:
        """Record an event and wake followers; it is stored in the background, and a failed
        store raises from every later ``emit`` and from ``flush``."""
        event = ProgressEvent(seq=len(self.events) + 1, ts=time.time(), host=host, step=step,
                              status=status, message=message)
        self.events.append(event)
        if self._echo is not None:
            self._echo(event)
        if self._persist is not None:
            self._pending.append(event)
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(
                    self._write_pending(), name=f"progress-{self.stream}")
        async with self._changed:
            self._changed.notify_all()
        if self._error is not None:
            raise self._error  # as the failed write's own emit would have, until flushed
        return event

    async def _write_pending(self) -> None:
        assert self._persist is not None
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._persist(self.stream, batch)
            except Exception as exc:
                log.warning("%s: storing progress events %d-%d failed: %s", self.stream,
                            batch[0].seq, batch[-1].seq, exc)
                if self._error is None:
                    self._error = exc

    async def flush(self) -> None:
        """Wait until every event emitted so far is stored; raises a failed store."""
        while self._writer is not None and not self._writer.done():
            # shielded: a cancelled run still stores what it reported
            await asyncio.shield(self._writer)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def close(self) -> None:
        """No more events: followers end once they have all of them; the rest is stored."""
        self.closed = True
        async with self._changed:
            self._changed.notify_all()
        await self.flush()

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


async def store_events(store: StateStore, stream: str, events: list[ProgressEvent]) -> None:
    """Append events to ``progress_events`` in one transaction."""
    await store.executemany(
        "INSERT INTO progress_events (stream, seq, ts, host, step, status, message)"
        " VALUES (?,?,?,?,?,?,?)",
        [(stream, e.seq, e.ts, e.host, e.step, e.status, e.message) for e in events])


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
