"""SQLite state: WAL, versioned migrations, one writer per process, BEGIN IMMEDIATE writes.

The server holds one aiosqlite connection; CLI commands open the same file with the
synchronous ``open_sync`` while the server runs. A server notices commits made by other
processes through ``PRAGMA data_version`` (see ``StateStore.changed``).

Work that must follow a commit (the audit trail's signed head names only committed entries)
registers with ``after_commit`` inside ``StateStore.transaction()`` or ``transaction_sync``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

STATE_FILE = "state.db"
BUSY_TIMEOUT_MS = 10_000
log = logging.getLogger(__name__)
# blocking callbacks of the transaction open in this context, by key (run once each)
_AFTER_COMMIT: ContextVar[dict[Hashable, Callable[[], object]] | None] = ContextVar(
    "after_commit", default=None)


def after_commit(key: Hashable, callback: Callable[[], object]) -> bool:
    """Run blocking ``callback`` once the enclosing transaction commits (the first one
    registered under ``key`` wins); False outside ``transaction()``/``transaction_sync``."""
    pending = _AFTER_COMMIT.get()
    if pending is None:
        return False
    pending.setdefault(key, callback)
    return True


def _run_after_commit(callbacks: Iterable[Callable[[], object]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            # the change is committed; a failed follow-up must not turn it into an error
            log.exception("after-commit callback %r failed", callback)


@contextmanager
def transaction_sync(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` on an autocommit connection: commit on success, roll back on any
    error; ``after_commit`` callbacks run after the commit."""
    pending: dict[Hashable, Callable[[], object]] = {}
    token = _AFTER_COMMIT.set(pending)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        _AFTER_COMMIT.reset(token)
    _run_after_commit(pending.values())


def migrations() -> list[tuple[int, str, str]]:
    """All packaged migrations as (version, name, sql), in order."""
    found = []
    for entry in resources.files("appliance.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            found.append((int(name[:4]), name, entry.read_text()))
    return sorted(found)


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns (the audit trail's signed head may name it
    # next); state changes are rare, so the extra fsync per commit costs nothing that matters
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction; return the schema version."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    version = max(applied, default=0)
    for number, name, sql in migrations():
        if number in applied:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # re-check under the write lock: another process may have just migrated
            if conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version=?", (number,)
            ).fetchone():
                conn.execute("ROLLBACK")
                continue
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, datetime('now'))", (number, name)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version


def open_sync(data_dir: Path) -> sqlite3.Connection:
    """A migrated synchronous connection in autocommit mode (for CLI commands)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / STATE_FILE, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    _configure(conn)
    migrate(conn)
    return conn


class StateStore:
    """The server's connection to ``state.db``: reads anywhere, writes through one lock."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._conn_: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._data_version = -1

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._conn_ is None:
            raise RuntimeError("state store used before open()")
        return self._conn_

    async def open(self) -> StateStore:
        """Migrate (off the loop) and open the state database."""
        await asyncio.to_thread(lambda: open_sync(self.data_dir).close())
        conn = await aiosqlite.connect(self.data_dir / STATE_FILE, isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute("PRAGMA synchronous=FULL")  # as _configure, for the audit head
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._conn_ = conn
        await self.changed()
        return self

    async def close(self) -> None:
        if self._conn_ is not None:
            await self._conn_.close()
            self._conn_ = None

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self._conn.execute(sql, params) as cursor:
            row: sqlite3.Row | None = await cursor.fetchone()
            return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: commit on success, roll back on any error;
        ``after_commit`` callbacks run in a thread after the commit."""
        pending: dict[Hashable, Callable[[], object]] = {}
        token = _AFTER_COMMIT.set(pending)
        try:
            async with self._write_lock:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    await self._conn.execute("ROLLBACK")
                    raise
                await self._conn.execute("COMMIT")
        finally:
            _AFTER_COMMIT.reset(token)
        if pending:
            await asyncio.to_thread(_run_after_commit, list(pending.values()))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write statement in its own transaction; return the rows changed."""
        async with self.transaction() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self.transaction() as conn:
            await conn.executemany(sql, rows)

    async def changed(self) -> bool:
        """True when another connection committed since the last call."""
        row = await self.fetchone("PRAGMA data_version")
        version = int(row[0]) if row else 0
        changed = version != self._data_version
        self._data_version = version
        return changed
