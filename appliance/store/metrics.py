"""Per-request metrics in DuckDB, written by one thread in batches off the event loop."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import msgspec

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.duckdb"
MAX_BATCH = 1000
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


_COLUMNS = [f for f in RequestRecord.__struct_fields__]
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
    latency_ms DOUBLE NOT NULL
)
"""


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

    def start(self) -> None:
        """Open the database in the writer thread; raise here if it cannot be opened."""
        self._thread.start()
        self._ready.result(timeout=30)

    def record(self, rec: RequestRecord) -> None:
        """Hand one record to the writer; never blocks, never touches the database."""
        self._queue.put(rec)

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
            conn = duckdb.connect(str(self.path))
            conn.execute(_SCHEMA)
        except Exception as exc:  # reported to start()
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        pending: list[RequestRecord] = []
        deadline = time.monotonic() + self._flush_interval
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    item = _TICK
                if isinstance(item, RequestRecord):
                    pending.append(item)
                    if len(pending) < MAX_BATCH and time.monotonic() < deadline:
                        continue
                if pending:
                    self._write(conn, pending)
                    pending = []
                deadline = time.monotonic() + self._flush_interval
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
        # One multi-row INSERT per chunk: far faster in DuckDB than executemany.
        width = len(_COLUMNS)
        placeholders = "(to_timestamp(?)," + ",".join("?" * (width - 1)) + ")"
        try:
            for start in range(0, len(rows), 200):
                chunk = rows[start : start + 200]
                params: list[Any] = []
                for rec in chunk:
                    params.extend(msgspec.structs.astuple(rec))
                conn.execute(
                    f"INSERT INTO requests VALUES {','.join([placeholders] * len(chunk))}", params
                )
            self.written += len(rows)
        except Exception:
            log.exception("could not write %d metric rows", len(rows))
