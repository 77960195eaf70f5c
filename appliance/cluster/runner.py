"""Running a playbook on hosts: in parallel across hosts, steps in order on each host.

An install is a job with a state machine (pending → running → success | failed | cancelled),
a row in ``installs``, and a ``ProgressLog`` of per-host, per-step events. Each host is locked
(``host_locks``, shared by every process on this data dir) for the length of its run, so two
runs cannot collide on one host; the loser fails at once, naming the holder. A run takes all
its hosts' locks in one transaction; each host releases its own when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from appliance.cluster import inventory
from appliance.cluster.events import ProgressEvent, ProgressLog, store_events
from appliance.cluster.facts import PARSERS, ParseContext, summarize
from appliance.cluster.playbook import Playbook, PlaybookError, Renderer, Step
from appliance.cluster.ssh import HostSession, HostTarget, SshError, SshPool, file_sha256
from appliance.kernel.errors import ApplianceError, Conflict, NotFound
from appliance.store.state import StateStore

log = logging.getLogger(__name__)


class HostBusy(Conflict):
    code = "host_busy"


class StepFailed(ApplianceError):
    code = "step_failed"


class StepResult(msgspec.Struct, kw_only=True):
    step: str
    status: str  # ok | changed | skipped | failed | warn | would-change
    message: str = ""
    duration_s: float = 0.0


class HostResult(msgspec.Struct, kw_only=True):
    host: str
    status: str = "pending"  # success | failed
    error: str = ""
    error_code: str = ""
    steps: list[StepResult] = []
    facts: dict[str, Any] = {}

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.status] = out.get(s.status, 0) + 1
        return out


class InstallRecord(msgspec.Struct, kw_only=True):
    id: str
    playbook: str
    hosts: list[str]
    dry_run: bool
    status: str
    summary: dict[str, Any]
    error: str
    created_at: float
    finished_at: float | None


def new_install_id() -> str:
    return "ins_" + secrets.token_hex(8)


# --- installs table ---------------------------------------------------------------------------


async def create_install(store: StateStore, install_id: str, playbook: str, hosts: list[str],
                         *, dry_run: bool, variables: dict[str, Any]) -> None:
    public_vars = {k: v for k, v in variables.items() if not k.endswith(("token", "password"))}
    await store.execute(
        "INSERT INTO installs (id, playbook, hosts, dry_run, vars, status, created_at)"
        " VALUES (?,?,?,?,?,?,?)",
        (install_id, playbook, msgspec.json.encode(hosts).decode(), int(dry_run),
         msgspec.json.encode(public_vars).decode(), "pending", time.time()))


async def finish_install(store: StateStore, install_id: str, status: str,
                         summary: dict[str, Any], error: str = "") -> None:
    await store.execute(
        "UPDATE installs SET status=?, summary=?, error=?, finished_at=? WHERE id=?",
        (status, msgspec.json.encode(summary).decode(), error, time.time(), install_id))


def _install(row: Any) -> InstallRecord:
    return InstallRecord(id=row["id"], playbook=row["playbook"],
                         hosts=msgspec.json.decode(row["hosts"]), dry_run=bool(row["dry_run"]),
                         status=row["status"], summary=msgspec.json.decode(row["summary"]),
                         error=row["error"], created_at=row["created_at"],
                         finished_at=row["finished_at"])


async def get_install(store: StateStore, install_id: str) -> InstallRecord:
    row = await store.fetchone("SELECT * FROM installs WHERE id=?", (install_id,))
    if row is None:
        raise NotFound(f"no install {install_id!r}", param="id")
    return _install(row)


async def list_installs(store: StateStore, limit: int = 50) -> list[InstallRecord]:
    rows = await store.fetchall("SELECT * FROM installs ORDER BY created_at DESC LIMIT ?",
                                (limit,))
    return [_install(r) for r in rows]


# --- per-host locks ---------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def acquire_host_locks(store: StateStore, hosts: list[str],
                             install_id: str) -> dict[str, HostBusy]:
    """Take the locks of ``hosts`` for ``install_id`` in one transaction (one write for the
    whole run, not one per host queued behind each other); the hosts a live run holds are
    left out and returned, each with the error it fails with."""
    busy: dict[str, HostBusy] = {}
    async with store.transaction() as conn:
        cur = await conn.execute(
            f"SELECT host, install_id, pid FROM host_locks WHERE host IN "
            f"({','.join('?' * len(hosts))})", hosts)
        held = {row["host"]: row for row in await cur.fetchall()}
        free = []
        for host in dict.fromkeys(hosts):
            row = held.get(host)
            if row is not None and row["install_id"] != install_id:
                if _pid_alive(int(row["pid"])):
                    busy[host] = HostBusy(f"{host}: locked by install {row['install_id']} "
                                          f"(process {row['pid']}); wait for it to finish",
                                          param="hosts")
                    continue
                log.warning("%s: taking over a stale lock of install %s", host,
                            row["install_id"])
            free.append(host)
        now = time.time()
        await conn.executemany(
            "INSERT INTO host_locks (host, install_id, pid, acquired_at) VALUES (?,?,?,?)"
            " ON CONFLICT(host) DO UPDATE SET install_id=excluded.install_id,"
            " pid=excluded.pid, acquired_at=excluded.acquired_at",
            [(host, install_id, os.getpid(), now) for host in free])
    return busy


async def release_host_lock(store: StateStore, host: str, install_id: str) -> None:
    await store.execute("DELETE FROM host_locks WHERE host=? AND install_id=?",
                        (host, install_id))


async def release_host_locks(store: StateStore, install_id: str) -> None:
    """Every lock ``install_id`` still holds (a host cancelled before it started)."""
    await store.execute("DELETE FROM host_locks WHERE install_id=?", (install_id,))


# --- targets ----------------------------------------------------------------------------------


async def host_target(store: StateStore, data_dir: Path, name: str,
                      _seen: frozenset[str] = frozenset()) -> HostTarget:
    """Everything the executor needs to reach host ``name`` (jump hosts resolved)."""
    if name in _seen:
        raise PlaybookError(f"jump host loop through {name!r}")
    host = await inventory.get_host(store, name)
    key = await inventory.host_key(store, name)
    jump = (await host_target(store, data_dir, host.jump_host, _seen | {name})
            if host.jump_host else None)
    return HostTarget(name=host.name, address=host.address, port=host.port, user=host.user,
                      credentials=await inventory.credentials(store, data_dir, name),
                      known_key=key.public_key, jump=jump)


# --- the runner -------------------------------------------------------------------------------


class PlaybookRunner:
    """Runs one playbook on several hosts and reports every step as an event."""

    def __init__(self, *, store: StateStore, data_dir: Path, pool: SshPool,
                 playbooks_dir: Path, appliance_vars: dict[str, Any] | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.pool = pool
        self.renderer = Renderer(playbooks_dir)
        self.appliance_vars = appliance_vars or {}

    async def run(self, book: Playbook, hosts: list[str], *, install_id: str | None = None,
                  variables: dict[str, Any] | None = None,
                  host_vars: dict[str, dict[str, Any]] | None = None, dry_run: bool = False,
                  progress: ProgressLog | None = None,
                  echo: Callable[[ProgressEvent], None] | None = None,
                  ) -> tuple[str, dict[str, HostResult]]:
        """Run ``book`` on ``hosts``; returns the install id and each host's result."""
        install_id = install_id or new_install_id()
        variables = dict(variables or {})
        missing = [v for v in book.requires if v not in variables
                   and not all(v in (host_vars or {}).get(h, {}) for h in hosts)]
        if missing:
            raise PlaybookError(f"playbook {book.name} needs {', '.join(missing)}")
        for name in hosts:
            await inventory.get_host(self.store, name)
        if not hosts:
            raise PlaybookError("no hosts given")
        await create_install(self.store, install_id, book.name, hosts, dry_run=dry_run,
                             variables=variables)
        if progress is None:
            progress = ProgressLog(install_id, persist=self._persist, echo=echo)
        await self.store.execute("UPDATE installs SET status='running' WHERE id=?",
                                 (install_id,))
        mode = " (dry run)" if dry_run else ""
        await progress.emit("started", f"playbook {book.name} on {', '.join(hosts)}{mode}")
        results: dict[str, HostResult] = {}
        status = "failed"
        try:
            busy = await acquire_host_locks(self.store, hosts, install_id)
            done = await asyncio.gather(*(
                self._run_host(book, h, install_id, {**variables, **(host_vars or {}).get(h, {})},
                               dry_run, progress, busy.get(h)) for h in hosts))
            results = {r.host: r for r in done}
            status = "success" if all(r.status == "success" for r in done) else "failed"
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            summary = {h: {"status": r.status, "error": r.error, "counts": r.counts()}
                       for h, r in results.items()}
            failed = [h for h, r in results.items() if r.status != "success"]
            text = (f"{len(hosts) - len(failed)}/{len(hosts)} hosts succeeded"
                    + (f"; failed: {', '.join(failed)}" if failed else ""))
            with contextlib.suppress(Exception):
                await progress.emit("done", f"{status}: {text}")
            try:
                # every event stored before the install reads as finished: follow_stored
                # (another process following this run) stops at the first final status
                await progress.flush()
            finally:
                if status == "cancelled":  # a host cancelled before it began keeps its lock
                    await asyncio.shield(release_host_locks(self.store, install_id))
                await asyncio.shield(finish_install(self.store, install_id, status, summary,
                                                    "" if status == "success" else text))
                await progress.close()
        return install_id, results

    async def _persist(self, stream: str, events: list[ProgressEvent]) -> None:
        await store_events(self.store, stream, events)

    async def _run_host(self, book: Playbook, name: str, install_id: str,
                        variables: dict[str, Any], dry_run: bool, progress: ProgressLog,
                        busy: HostBusy | None) -> HostResult:
        """One host's steps, its lock (taken by ``run``) released at the end."""
        result = HostResult(host=name)
        if busy is not None:
            result.status, result.error, result.error_code = "failed", busy.message, busy.code
            await progress.emit("failed", busy.message, host=name)
            return result
        try:
            host = await inventory.get_host(self.store, name)
            target = await host_target(self.store, self.data_dir, name)
            session = await self.pool.session(target)
            await progress.emit("info", f"connected as {target.user}", host=name)
            facts: dict[str, Any] = dict(host.facts)
            ctx: dict[str, Any] = {
                **book.vars, **variables,
                "host": {"name": host.name, "address": host.address, "role": host.role,
                         "user": host.user, "labels": host.labels},
                "appliance": self.appliance_vars, "facts": facts, "dry_run": dry_run,
            }
            new_facts: dict[str, Any] = {}
            for step in book.steps:
                for item_ctx, label in self._expand(step, ctx):
                    outcome = await self._run_step(step, label, session, item_ctx, dry_run,
                                                   new_facts, facts, progress, name)
                    result.steps.append(outcome)
                    if outcome.status == "failed" and not step.ignore_errors:
                        raise StepFailed(f"step {label!r} failed: {outcome.message}")
            if new_facts:
                new_facts.update(summarize({**facts, **new_facts}))
                await inventory.save_facts(self.store, name, new_facts)
            result.facts = {**facts, **new_facts}
            result.status = "success"
        except ApplianceError as exc:
            result.status, result.error, result.error_code = "failed", exc.message, exc.code
            if not isinstance(exc, StepFailed):
                await progress.emit("failed", exc.message, host=name)
            if isinstance(exc, SshError):
                await self.pool.drop(name)
        finally:
            await release_host_lock(self.store, name, install_id)
        counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
        await progress.emit("ok" if result.status == "success" else "failed",
                            f"host {result.status} ({counts or 'no steps'})", host=name)
        return result

    def _expand(self, step: Step, ctx: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
        if not step.loop:
            return [(ctx, step.name)]
        items = self.renderer.expr(step.loop, ctx)
        if not isinstance(items, list | tuple):
            raise PlaybookError(f"step {step.name!r}: loop must give a list, got {items!r}")
        return [({**ctx, "item": item}, f"{step.name}[{i}]") for i, item in enumerate(items)]

    async def _run_step(self, step: Step, label: str, session: HostSession, ctx: dict[str, Any],
                        dry_run: bool, new_facts: dict[str, Any], facts: dict[str, Any],
                        progress: ProgressLog, host: str) -> StepResult:
        started = time.monotonic()
        await progress.emit("started", host=host, step=label)
        try:
            status, message = await self._do_step(step, session, ctx, dry_run, new_facts, facts)
        except SshError:
            raise
        except ApplianceError as exc:
            status, message = "failed", exc.message
        out = StepResult(step=label, status=status, message=message,
                         duration_s=round(time.monotonic() - started, 3))
        await progress.emit(status, message, host=host, step=label)  # type: ignore[arg-type]
        return out

    async def _do_step(self, step: Step, session: HostSession, ctx: dict[str, Any],
                       dry_run: bool, new_facts: dict[str, Any],
                       facts: dict[str, Any]) -> tuple[str, str]:
        r = self.renderer
        if step.when is not None and not r.expr(step.when, ctx):
            return "skipped", f"when: {step.when}"
        if step.creates:
            path = r.text(step.creates, ctx)
            if (await session.run(f"test -e {shlex.quote(path)}", sudo=step.sudo)).ok:
                return "ok", f"{path} exists"
        if step.unless:
            cmd = r.text(step.unless, ctx)
            if (await session.run(cmd, sudo=step.sudo, timeout_s=step.timeout_s)).ok:
                return "ok", "unless: condition already met"

        if step.check is not None:
            holds = bool(r.expr(step.check, ctx))
            message = r.text(step.message, ctx) if step.message else step.check
            if holds:
                return "ok", message
            return ("warn" if step.severity == "warn" else "failed"), message

        if step.run is not None:
            cmd = r.text(step.run, ctx)
            if dry_run and not step.read_only:
                return "would-change", f"would run: {_short(cmd)}"
            sent = time.time()
            res = await session.run(cmd, sudo=step.sudo, timeout_s=step.timeout_s)
            received = time.time()
            if not res.ok:
                detail = (res.stderr.strip() or res.stdout.strip())[-400:]
                return "failed", f"exit {res.exit_status}: {detail}"
            if step.register:
                ctx[step.register] = res.stdout.strip()
            if step.facts:
                parse = PARSERS.get(step.facts)
                if parse is None:
                    raise PlaybookError(f"step {step.name!r}: no facts parser {step.facts!r}")
                parsed = parse(res.stdout, ParseContext(sent_at=sent, received_at=received))
                new_facts.update(parsed)
                facts.update(parsed)
                facts.update(summarize(facts))
            message = r.text(step.message, ctx) if step.message else ""
            return ("ok" if step.read_only else "changed"), message

        if step.upload is not None:
            src = Path(r.text(step.upload.src, ctx))
            dest = r.text(step.upload.dest, ctx)
            if not await asyncio.to_thread(src.is_file):
                return "failed", f"local file {src} does not exist"
            if dry_run:
                same = await session.remote_sha256(dest) == await asyncio.to_thread(
                    file_sha256, src)
                return ("ok", f"{dest} up to date") if same else (
                    "would-change", f"would upload {src.name} to {dest}")
            changed = await session.upload(src, dest, mode=int(step.upload.mode, 8))
            return ("changed", f"uploaded {dest} (sha256 verified)") if changed else (
                "ok", f"{dest} up to date")

        assert step.template is not None
        spec = step.template
        dest = r.text(spec.dest, ctx)
        body = (r.text(spec.content, ctx) if spec.content is not None
                else r.template_file(r.text(spec.src or "", ctx), ctx)).encode()
        if dry_run:
            same = await session.remote_sha256(dest) == hashlib.sha256(body).hexdigest()
            return ("ok", f"{dest} up to date") if same else ("would-change",
                                                               f"would write {dest}")
        changed = await session.write_bytes(body, dest, mode=int(spec.mode, 8))
        return ("changed", f"wrote {dest}") if changed else ("ok", f"{dest} up to date")


def _short(cmd: str) -> str:
    one = " ".join(cmd.split())
    return one if len(one) <= 160 else one[:157] + "..."
