"""Per-request metrics in DuckDB, written by one thread in batches off the event loop."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.duckdb"
MAX_BATCH = 50_000
T = TypeVar("T")


class RequestRecord(msgspec.Struct, array_like=True):
    """What the gateway records about one request, handed over without blocking."""

    ts: float
    request_id: str
    endpoint: str
    model: str
    route: str
    target: str
    key_id: str
    project_id: str
    status: int
    error: str
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    latency_ms: float
    user_id: str = ""  # who owns the key: usage per user


_COLUMNS = list(RequestRecord.__struct_fields__)
_NUMPY_TYPES: dict[str, Any] = {
    "ts": np.float64, "status": np.int32, "stream": np.bool_, "prompt_tokens": np.int32,
    "completion_tokens": np.int32, "ttft_ms": np.float64, "latency_ms": np.float64,
}
_SELECT = {"ts": "to_timestamp(ts)",
           "ttft_ms": "CASE WHEN isnan(ttft_ms) THEN NULL ELSE ttft_ms END"}
_INSERT = ("INSERT INTO requests SELECT "
           + ", ".join(_SELECT.get(c, c) for c in _COLUMNS) + " FROM batch")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    ts TIMESTAMPTZ NOT NULL,
    request_id VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    route VARCHAR NOT NULL,
    target VARCHAR NOT NULL,
    key_id VARCHAR NOT NULL,
    project_id VARCHAR NOT NULL,
    status INTEGER NOT NULL,
    error VARCHAR NOT NULL,
    stream BOOLEAN NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    ttft_ms DOUBLE,
    latency_ms DOUBLE NOT NULL,
    user_id VARCHAR NOT NULL DEFAULT ''
)
"""
# Metrics files made before a column existed get it added (at the end, like the Struct).
_UPGRADES = ("ALTER TABLE requests ADD COLUMN IF NOT EXISTS user_id VARCHAR DEFAULT ''",)


_TICK = object()  # "the flush interval passed"


class _Query(msgspec.Struct):
    fn: Callable[[duckdb.DuckDBPyConnection], Any]
    future: Future[Any]


class MetricsWriter:
    """Owns the DuckDB connection. ``record`` is a queue put; everything else runs in its thread."""

    def __init__(self, data_dir: Path, *, flush_interval_s: float = 0.5) -> None:
        self.path = data_dir / METRICS_FILE
        self._flush_interval = flush_interval_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="metrics-writer", daemon=True)
        self._ready: Future[None] = Future()
        self.written = 0
        # Appended to by the event loop, swapped out whole by the writer thread; both are
        # single bytecode operations, so the GIL makes them safe without a lock.
        self._pending: list[RequestRecord] = []

    def start(self) -> None:
        """Open the database in the writer thread; raise here if it cannot be opened."""
        self._thread.start()
        self._ready.result(timeout=30)

    def record(self, rec: RequestRecord) -> None:
        """Hand one record to the writer: a list append, no lock, no thread wake-up."""
        self._pending.append(rec)

    def query(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> Future[T]:
        """Run ``fn(connection)`` in the writer thread after pending records are written."""
        future: Future[T] = Future()
        self._queue.put(_Query(fn, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then close the database."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            # one DuckDB thread: ingest is tiny and idle worker threads cost the gateway CPU
            conn = duckdb.connect(str(self.path), config={"threads": 1})
            conn.execute(_SCHEMA)
            for statement in _UPGRADES:
                conn.execute(statement)
        except Exception as exc:  # reported to start()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self._flush_interval)
                except queue.Empty:
                    item = _TICK
                rows, self._pending = self._pending, []
                for start in range(0, len(rows), MAX_BATCH):
                    self._write(conn, rows[start : start + MAX_BATCH])
                if item is None:
                    break
                if isinstance(item, _Query):
                    try:
                        item.future.set_result(item.fn(conn))
                    except Exception as exc:
                        item.future.set_exception(exc)
        finally:
            conn.close()

    def _write(self, conn: duckdb.DuckDBPyConnection, rows: Sequence[RequestRecord]) -> None:
        # Columnar ingest through a dict of numpy arrays: ~2 µs a row, where parameter
        # binding (INSERT ... VALUES (?, ...)) costs ~150 µs a row of this process's CPU.
        columns = list(zip(*(msgspec.structs.astuple(r) for r in rows), strict=True))
        batch = {}
        for name, values in zip(_COLUMNS, columns, strict=True):
            kind = _NUMPY_TYPES.get(name, object)
            if name == "ttft_ms":
                values = tuple(np.nan if v is None else v for v in values)
            batch[name] = np.array(values, dtype=kind)
        try:
            conn.register("batch", batch)
            conn.execute(_INSERT)
            conn.unregister("batch")
            self.written += len(rows)
        except Exception:
            log.exception("could not write %d metric rows", len(rows))
