from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.store.state import (
    StateStore,
    after_commit,
    migrate,
    migrations,
    open_sync,
    transaction_sync,
)


def test_migrations_are_numbered_and_idempotent(tmp_path: Path) -> None:
    numbers = [n for n, _, _ in migrations()]
    assert numbers == sorted(set(numbers)) and numbers[0] == 1
    conn = open_sync(tmp_path)
    assert migrate(conn) == numbers[-1]
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(numbers)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = await StateStore(tmp_path).open()
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            await conn.execute("INSERT INTO blobs VALUES ('sha256:x', 1, 0)")
            raise RuntimeError("fail midway")
    assert await store.fetchall("SELECT * FROM blobs") == []
    await store.close()


async def test_after_commit_runs_once_per_key_and_only_after_a_commit(tmp_path: Path) -> None:
    store = await StateStore(tmp_path).open()
    seen: list[str] = []

    def look(label: str) -> None:  # runs after COMMIT: a new connection sees the row
        conn = sqlite3.connect(tmp_path / "state.db")
        seen.append(f"{label}:{conn.execute('SELECT count(*) FROM blobs').fetchone()[0]}")
        conn.close()

    assert not after_commit("k", lambda: look("outside"))
    async with store.transaction() as conn:
        await conn.execute("INSERT INTO blobs VALUES ('sha256:a', 1, 0)")
        assert after_commit("k", lambda: look("first"))
        assert after_commit("k", lambda: look("second"))  # same key: the first one wins
    assert seen == ["first:1"]
    with pytest.raises(RuntimeError):
        async with store.transaction() as conn:
            after_commit("k", lambda: look("rolled-back"))
            raise RuntimeError("fail")
    sync = open_sync(tmp_path)
    with transaction_sync(sync):
        sync.execute("INSERT INTO blobs VALUES ('sha256:b', 1, 0)")
        after_commit("k", lambda: look("sync"))
    with pytest.raises(RuntimeError), transaction_sync(sync):
        after_commit("k", lambda: look("sync-rolled-back"))
        raise RuntimeError("fail")
    sync.close()
    assert seen == ["first:1", "sync:2"]
    await store.close()


async def test_changes_from_another_process_are_noticed(tmp_path: Path) -> None:
    store = await StateStore(tmp_path).open()
    assert not await store.changed()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("INSERT INTO blobs VALUES ('sha256:y', 1, 0)")
    other.close()
    assert await store.changed()
    assert not await store.changed()
    await store.close()
