"""Imports run by the server: jobs with live progress, uploads, and USB watch directories.

A job is a small state machine (pending → running → success | error) with bytes done and
total, rate and ETA, readable while it runs (``GET /api/bundles/imports/{id}``). Jobs are kept
in ``import_jobs`` (a row when one starts, updated when it ends), so the history outlives a
restart and an import the server stopped in the middle of shows as interrupted. The watcher
polls the configured directories (``bundle.watch_dirs``, e.g. ``/media``) and imports a bundle
once its ``bundle.json`` (or a ``.tar``) has stopped changing between two polls; such imports
need a signature by a trusted key.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from appliance.bundle.importer import ImportResult, import_bundle
from appliance.kernel.errors import ApplianceError
from appliance.kernel.tasks import TaskGroupOwner

if TYPE_CHECKING:
    from appliance.store.state import StateStore

log = logging.getLogger(__name__)
MAX_JOBS_KEPT = 100
INTERRUPTED = "interrupted by a restart; import it again (imports resume)"
_JOB_COLUMNS = ("id, source, origin, state, bytes_done, bytes_total, started_at, finished_at,"
                " result, error, error_code")
_encode_result = msgspec.json.Encoder().encode
_decode_result = msgspec.json.Decoder(ImportResult).decode
#: Who imports what a watch directory brings in.
WATCH_ACTOR = "system:watch-dir"


async def audit_import(store: StateStore, *, actor: str, source: str, source_address: str = "",
                       result: ImportResult | None = None, error: str = "") -> None:
    """One audit entry per import: ``bundle.import`` on success (unless nothing was new) and
    on failure (outcome ``failure``, the bundle named by where it came from)."""
    from appliance.identity import audit

    if result is None:
        await audit.write(store, actor=actor, action="bundle.import", target=source,
                          detail={"source": source, "error": error},
                          source_address=source_address, outcome="failure")
    elif not result.already_imported:
        await audit.write(store, actor=actor, action="bundle.import", target=result.bundle_id,
                          detail={"name": result.name, "version": result.version,
                                  "signed_by": result.signed_by, "source": source,
                                  "models": result.models},
                          source_address=source_address)


class ImportJob(msgspec.Struct, kw_only=True):
    id: str
    source: str
    origin: str  # api | upload | watch
    state: str = "pending"  # pending | running | success | error
    bytes_done: int = 0
    bytes_total: int = 0
    percent: float = 0.0
    rate_bytes_s: float = 0.0
    eta_s: float | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    result: ImportResult | None = None
    error: str = ""
    error_code: str = ""


class ImportJobs:
    """Owns the server's import jobs and the watch-directory poller."""

    def __init__(self, data_dir: Path, *, on_imported: Callable[[], Awaitable[None]],
                 watch_dirs: list[str], watch_interval_s: float,
                 store: StateStore | None = None) -> None:
        self.data_dir = data_dir
        self.store = store  # the audit trail's; None in tests that do not need one
        self.on_imported = on_imported
        self.watch_dirs = [Path(d).expanduser() for d in watch_dirs]
        self.watch_interval_s = watch_interval_s
        self.jobs: dict[str, ImportJob] = {}  # this run's, live while they run
        self.tasks = TaskGroupOwner("bundle-imports")
        self._seen: dict[Path, tuple[int, float]] = {}
        self._handled: dict[Path, tuple[int, float]] = {}

    def start(self, path: Path, *, origin: str, allow_unsigned: bool = False,
              cleanup: Path | None = None, source: str = "", actor: str = WATCH_ACTOR,
              source_address: str = "") -> ImportJob:
        """Start importing ``path`` in the background; return the job to poll.

        ``source`` is what the job and the bundle are recorded as coming from (default: path);
        ``actor`` and ``source_address`` go to the audit entry the outcome writes.
        """
        job = ImportJob(id="imp_" + uuid.uuid4().hex[:12], source=source or str(path),
                        origin=origin)
        self.jobs[job.id] = job
        for old in list(self.jobs)[:-MAX_JOBS_KEPT]:
            if self.jobs[old].state in ("success", "error"):
                del self.jobs[old]
        self.tasks.spawn(self._run(job, path, allow_unsigned, cleanup, actor, source_address),
                         name=job.id)
        return job

    async def _run(self, job: ImportJob, path: Path, allow_unsigned: bool,
                   cleanup: Path | None, actor: str, source_address: str) -> None:
        job.state, job.started_at = "running", time.time()
        await self._save(job, new=True)
        first: list[int] = []

        def progress(done: int, total: int) -> None:
            # called from the import thread: plain attribute writes only
            if not first:
                first.append(done)  # bytes already present are not part of the rate
            elapsed = max(time.time() - job.started_at, 1e-6)
            rate = (done - first[0]) / elapsed
            job.bytes_done, job.bytes_total = done, total
            job.percent = round(100.0 * done / total, 1) if total else 100.0
            job.rate_bytes_s = rate
            job.eta_s = (total - done) / rate if rate > 0 else None

        try:
            job.result = await asyncio.to_thread(import_bundle, self.data_dir, path,
                                                 progress=progress,
                                                 allow_unsigned=allow_unsigned,
                                                 source=job.source)
            job.state = "success"
            job.percent, job.eta_s = 100.0, 0.0
            log.info("bundle import %s from %s done", job.id, path)
            await self.on_imported()
        except ApplianceError as exc:
            job.state, job.error_code = "error", exc.code
            job.error = self._say(exc.message, job, path)
            log.warning("bundle import %s from %s failed: %s", job.id, path, exc.message)
        except Exception as exc:  # recorded on the job and logged, never swallowed
            job.state, job.error_code = "error", "internal_error"
            job.error = self._say(str(exc), job, path)
            log.exception("bundle import %s from %s failed", job.id, path)
        finally:
            job.finished_at = time.time()
            if cleanup is not None:
                await asyncio.to_thread(cleanup.unlink, missing_ok=True)
        await self._save(job, new=False)
        if self.store is not None and job.state in ("success", "error"):
            try:
                await audit_import(self.store, actor=actor, source=job.source,
                                   source_address=source_address, result=job.result,
                                   error=job.error)
            except Exception:  # the import stands; the missing entry is logged loudly
                log.exception("could not audit bundle import %s", job.id)

    async def _save(self, job: ImportJob, *, new: bool) -> None:
        """Write the job's row when it starts (``new``) or ends; a failed write is logged,
        the import goes on."""
        if self.store is None:
            return
        result = _encode_result(job.result).decode() if job.result is not None else None
        try:
            async with self.store.transaction() as conn:
                if new:
                    await conn.execute(
                        f"INSERT OR REPLACE INTO import_jobs ({_JOB_COLUMNS})"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (job.id, job.source, job.origin, job.state, job.bytes_done,
                         job.bytes_total, job.started_at, job.finished_at, result, job.error,
                         job.error_code))
                    return
                await conn.execute(
                    "UPDATE import_jobs SET state=?, bytes_done=?, bytes_total=?,"
                    " finished_at=?, result=?, error=?, error_code=? WHERE id=?",
                    (job.state, job.bytes_done, job.bytes_total, job.finished_at, result,
                     job.error, job.error_code, job.id))
                await conn.execute(
                    "DELETE FROM import_jobs WHERE state IN ('success', 'error') AND rowid NOT IN"
                    " (SELECT rowid FROM import_jobs ORDER BY rowid DESC LIMIT ?)",
                    (MAX_JOBS_KEPT,))
        except Exception:
            log.exception("could not record bundle import %s in the state database", job.id)

    @staticmethod
    def _from_row(row: sqlite3.Row) -> ImportJob:
        result = None
        if row["result"]:
            try:
                result = _decode_result(row["result"])
            except msgspec.DecodeError:  # written by another version: the job still lists
                log.warning("bundle import %s: unreadable stored result", row["id"])
        success = row["state"] == "success"
        return ImportJob(id=row["id"], source=row["source"], origin=row["origin"],
                         state=row["state"], bytes_done=row["bytes_done"],
                         bytes_total=row["bytes_total"],
                         percent=100.0 if success else (
                             round(100.0 * row["bytes_done"] / row["bytes_total"], 1)
                             if row["bytes_total"] else 0.0),
                         eta_s=0.0 if success else None,
                         started_at=row["started_at"], finished_at=row["finished_at"],
                         result=result,
                         error=row["error"], error_code=row["error_code"])

    async def list_jobs(self) -> list[ImportJob]:
        """The newest jobs, stored and live (live ones with their progress), newest last."""
        if self.store is None:
            return list(self.jobs.values())
        rows = await self.store.fetchall(
            f"SELECT {_JOB_COLUMNS} FROM import_jobs ORDER BY rowid DESC LIMIT ?",
            (MAX_JOBS_KEPT,))
        listed = [self.jobs.get(row["id"]) or self._from_row(row) for row in reversed(rows)]
        stored = {row["id"] for row in rows}
        listed += [job for job in self.jobs.values() if job.id not in stored]  # not yet written
        return listed[-MAX_JOBS_KEPT:]

    async def get(self, job_id: str) -> ImportJob | None:
        """One job, live or stored; None when unknown."""
        live = self.jobs.get(job_id)
        if live is not None or self.store is None:
            return live
        row = await self.store.fetchone(
            f"SELECT {_JOB_COLUMNS} FROM import_jobs WHERE id=?", (job_id,))
        return self._from_row(row) if row is not None else None

    async def mark_interrupted(self) -> int:
        """Mark stored jobs that are 'running' but not running here as failed; return how many."""
        if self.store is None:
            return 0
        live = [job.id for job in self.jobs.values() if job.state in ("pending", "running")]
        marks = ",".join("?" * len(live))
        changed = await self.store.execute(
            "UPDATE import_jobs SET state='error', error=?, error_code='interrupted',"
            " finished_at=? WHERE state IN ('pending', 'running')"
            + (f" AND id NOT IN ({marks})" if live else ""),
            (INTERRUPTED, time.time(), *live))
        if changed:
            log.warning("%d bundle import(s) were stopped by the last shutdown; they are "
                        "marked interrupted", changed)
        return changed

    @staticmethod
    def _say(message: str, job: ImportJob, path: Path) -> str:
        """An error as the operator knows the bundle: an upload by its name, not its copy."""
        return message.replace(str(path), job.source) if job.source != str(path) else message

    # --- watch directories --------------------------------------------------------------------

    def _candidates(self) -> dict[Path, tuple[int, float]]:
        """Bundles (a dir with bundle.json, or a .tar) up to two levels below each watch dir."""
        found: dict[Path, tuple[int, float]] = {}
        for root in self.watch_dirs:
            levels = [root]
            for _ in range(3):
                nxt = []
                for d in levels:
                    try:
                        entries = list(d.iterdir())
                    except OSError:
                        continue
                    for entry in entries:
                        try:
                            if entry.name == "bundle.json" and entry.is_file():
                                st = entry.stat()
                                found[d] = (st.st_size, st.st_mtime)
                            elif entry.suffix == ".tar" and entry.is_file():
                                st = entry.stat()
                                found[entry] = (st.st_size, st.st_mtime)
                            elif entry.is_dir() and not entry.is_symlink() and \
                                    not entry.name.startswith("."):
                                nxt.append(entry)
                        except OSError:
                            continue
                levels = nxt
        return found

    async def poll_once(self) -> list[ImportJob]:
        """Start imports of bundles that appeared and have been stable for one poll."""
        now = await asyncio.to_thread(self._candidates)
        started = []
        for path, sig in now.items():
            if self._seen.get(path) == sig and self._handled.get(path) != sig:
                self._handled[path] = sig
                log.info("bundle appeared under a watch directory: %s", path)
                started.append(self.start(path, origin="watch"))
        self._seen = now
        return started

    async def watch(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling the bundle watch directories failed")
            await asyncio.sleep(self.watch_interval_s)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: mark imports the last run left unfinished, run the watcher; on
        shutdown cancel it and any running import (its row stays 'running' until the next
        start marks it)."""
        await self.mark_interrupted()
        if self.watch_dirs:
            self.tasks.spawn(self.watch(), name="watch-dirs")
        yield
        await self.tasks.close()
