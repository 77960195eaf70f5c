"""Progress logs: live followers at once, stored in order in batches, failed stores raised."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from appliance.cluster.events import ProgressEvent, ProgressLog, store_events, stored_events
from appliance.store.state import StateStore


async def test_events_stored_in_order_in_batches(store: StateStore) -> None:
    batches: list[list[int]] = []

    async def persist(stream: str, events: list[ProgressEvent]) -> None:
        batches.append([e.seq for e in events])
        await asyncio.sleep(0.02)  # a slow disk: events pile up meanwhile
        await store_events(store, stream, events)

    log = ProgressLog("run1", persist=persist)
    seen: list[int] = []

    async def follow() -> None:
        async for event in log.follow():
            seen.append(event.seq)

    follower = asyncio.create_task(follow())
    for i in range(40):
        await log.emit("info", f"event {i}", host=f"h{i % 4}")
        await asyncio.sleep(0)
    # emit did not wait for the database: the last events are not stored yet
    assert len(await stored_events(store, "run1")) < 40
    await log.close()
    await follower
    assert seen == list(range(1, 41))
    assert [s for batch in batches for s in batch] == list(range(1, 41))
    assert 1 < len(batches) < 40
    assert [e.seq for e in await stored_events(store, "run1")] == list(range(1, 41))


async def test_failed_store_raises_from_emit_and_flush(tmp_path: Path) -> None:
    calls = 0

    async def persist(stream: str, events: list[ProgressEvent]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    log = ProgressLog("run2", persist=persist)
    await log.emit("started")
    await asyncio.sleep(0.01)  # the write fails in the background
    with pytest.raises(OSError, match="disk full"):
        await log.emit("info", "next")
    with pytest.raises(OSError, match="disk full"):
        await log.flush()
    await log.emit("info", "later")  # raised once by flush: later writes go on
    await log.close()
    assert calls == 3 and len(log.events) == 3
