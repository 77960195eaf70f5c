"""The hash-chained audit trail (table ``audit_log``): who did what to which thing, from where.

Each entry stores the sha256 of its own canonical form, which includes the previous entry's
hash, so an edited, deleted or reordered row breaks the chain at that row. Every
``CHECKPOINT_EVERY`` entries an Ed25519 signature over (entry id, entry hash) is stored in
``audit_checkpoints``; an auditor holding the public key can check an export offline. After
every transaction that recorded entries, the signed head outside the database
(``audit_head``) moves to the newest entry, so rows deleted from the end show as well.

Callers record inside the transaction that makes the change, so the change and its audit
entry commit together or not at all: ``record`` for a ``sqlite3`` connection (CLI, bundle
import), ``record_async`` for the server's aiosqlite connection. Details are scrubbed of
anything that looks like a secret before they are written. The head follows the commit:
inside ``StateStore.transaction()`` or ``transaction_sync`` it is written right after it;
a caller that commits by hand gets it with the next write or at process exit, unless it
calls ``audit_head.publish_head`` itself.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.identity.audit_head import (
    HEAD_FILE,
    Head,
    check_head,
    head_from_export,
    publish_head,
    read_head,
    schedule_head,
    since_note,
)
from appliance.identity.audit_signing import key_id, public_key, public_key_pem, signing_key
from appliance.store.state import STATE_FILE, StateStore, transaction_sync

CHECKPOINT_EVERY = 100
_SECRET_WORDS = ("password", "secret", "api_key", "apikey", "token", "private", "credential")
_FIELDS = "id, at, actor, action, target, source_address, outcome, detail, prev_hash, hash"


class AuditEntry(msgspec.Struct, kw_only=True):
    """One row of the audit trail."""

    id: int
    at: float
    actor: str
    action: str
    target: str
    source_address: str
    outcome: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class Checkpoint(msgspec.Struct, kw_only=True):
    id: int
    entry_id: int
    entry_hash: str
    at: float
    key_id: str
    signature: str


class VerifyResult(msgspec.Struct, kw_only=True):
    """The outcome of checking the chain: ``ok`` or the first broken entry and why."""

    ok: bool
    entries: int
    checkpoints: int
    first_broken_id: int | None = None
    reason: str = ""
    head: int | None = None  # the entry the signed head names, once checked
    note: str = ""  # what an intact result does not cover (a head created late)


def cli_actor() -> str:
    """The actor name of a command run by a local user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def scrub(detail: dict[str, Any] | None) -> dict[str, Any]:
    """``detail`` without values whose keys name a secret (recursively)."""
    out: dict[str, Any] = {}
    for key, value in (detail or {}).items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            out[key] = "[redacted]"
        elif isinstance(value, dict):
            out[key] = scrub(value)
        else:
            out[key] = value
    return out


def entry_hash(*, id: int, at: float, actor: str, action: str, target: str,
               source_address: str, outcome: str, detail: str, prev_hash: str) -> str:
    """sha256 over the canonical JSON of an entry's fields, the previous hash included."""
    canonical = json.dumps([id, at, actor, action, target, source_address, outcome, detail,
                            prev_hash], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _row_hash(row: Sequence[Any], prev_hash: str) -> str:
    return entry_hash(id=row[0], at=row[1], actor=row[2], action=row[3], target=row[4],
                      source_address=row[5], outcome=row[6], detail=row[7],
                      prev_hash=prev_hash)


def _checkpoint_row(key: Ed25519PrivateKey, entry_id: int, digest: str) -> tuple[Any, ...]:
    message = f"{entry_id}:{digest}".encode()
    signature = base64.b64encode(key.sign(message)).decode()
    return (entry_id, digest, time.time(), key_id(key.public_key()), signature)


def _data_dir_of(conn: sqlite3.Connection) -> Path:
    row = conn.execute("PRAGMA database_list").fetchone()
    return Path(row[2]).parent


# --- writing ------------------------------------------------------------------------------------


def _unsealed_sql() -> str:
    return f"SELECT {_FIELDS} FROM audit_log WHERE id > ? ORDER BY id"


def _seal_rows(rows: Iterable[Sequence[Any]], prev: str) -> tuple[list[tuple[str, str, int]], str]:
    updates = []
    for row in rows:
        digest = _row_hash(row, prev)
        updates.append((prev, digest, row[0]))
        prev = digest
    return updates, prev


def seal(conn: sqlite3.Connection) -> int:
    """Hash rows written before the chain existed (``hash=''``); call inside a transaction."""
    last = conn.execute(
        "SELECT id, hash FROM audit_log WHERE hash != '' ORDER BY id DESC LIMIT 1").fetchone()
    after, prev = (last[0], last[1]) if last else (0, "")
    updates, _ = _seal_rows(conn.execute(_unsealed_sql(), (after,)).fetchall(), prev)
    conn.executemany("UPDATE audit_log SET prev_hash=?, hash=? WHERE id=?", updates)
    return len(updates)


def record(conn: sqlite3.Connection, *, actor: str, action: str, target: str,
           detail: dict[str, Any] | None = None, source_address: str = "",
           outcome: str = "success") -> int:
    """Append one entry (use inside the change's own transaction); return its id."""
    last = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    if last is not None and not last[1]:
        seal(conn)
        last = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    entry_id = (last[0] if last else 0) + 1
    prev = last[1] if last else ""
    values = (entry_id, time.time(), actor, action, target, source_address, outcome,
              json.dumps(scrub(detail), sort_keys=True))
    digest = _row_hash(values, prev)
    conn.execute(f"INSERT INTO audit_log ({_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (*values, prev, digest))
    db_file = conn.execute("PRAGMA database_list").fetchone()[2]
    if entry_id % CHECKPOINT_EVERY == 0:
        key = signing_key(_data_dir_of(conn))
        conn.execute("INSERT INTO audit_checkpoints (entry_id, entry_hash, at, key_id, signature)"
                     " VALUES (?,?,?,?,?)", _checkpoint_row(key, entry_id, digest))
    if db_file:  # not an in-memory database
        schedule_head(Path(db_file).parent, entry_id)
    return entry_id


async def record_async(conn: aiosqlite.Connection, *, actor: str, action: str, target: str,
                       detail: dict[str, Any] | None = None, source_address: str = "",
                       outcome: str = "success", data_dir: Path | None = None) -> int:
    """``record`` for the server's connection, inside ``StateStore.transaction()``."""
    async with conn.execute(
            "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1") as cur:
        last = await cur.fetchone()
    if last is not None and not last[1]:
        async with conn.execute(
                "SELECT id, hash FROM audit_log WHERE hash != '' ORDER BY id DESC LIMIT 1"
        ) as cur:
            sealed = await cur.fetchone()
        after, prev = (sealed[0], sealed[1]) if sealed else (0, "")
        async with conn.execute(_unsealed_sql(), (after,)) as cur:
            updates, _ = _seal_rows(await cur.fetchall(), prev)
        await conn.executemany("UPDATE audit_log SET prev_hash=?, hash=? WHERE id=?", updates)
        async with conn.execute(
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1") as cur:
            last = await cur.fetchone()
    entry_id = (last[0] if last else 0) + 1
    prev = last[1] if last else ""
    values = (entry_id, time.time(), actor, action, target, source_address, outcome,
              json.dumps(scrub(detail), sort_keys=True))
    digest = _row_hash(values, prev)
    await conn.execute(f"INSERT INTO audit_log ({_FIELDS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (*values, prev, digest))
    if entry_id % CHECKPOINT_EVERY == 0 and data_dir is not None:
        key = await asyncio.to_thread(signing_key, data_dir)
        await conn.execute(
            "INSERT INTO audit_checkpoints (entry_id, entry_hash, at, key_id, signature)"
            " VALUES (?,?,?,?,?)", _checkpoint_row(key, entry_id, digest))
    if data_dir is not None:
        schedule_head(data_dir, entry_id)
    return entry_id


async def write(store: StateStore, *, actor: str, action: str, target: str,
                detail: dict[str, Any] | None = None, source_address: str = "",
                outcome: str = "success") -> int:
    """Record one entry in a transaction of its own (sign-ins, denied attempts)."""
    async with store.transaction() as conn:
        return await record_async(conn, actor=actor, action=action, target=target,
                                  detail=detail, source_address=source_address,
                                  outcome=outcome, data_dir=store.data_dir)


def write_sync(data_dir: Path, *, actor: str, action: str, target: str,
               detail: dict[str, Any] | None = None, source_address: str = "",
               outcome: str = "success") -> int:
    """Record one entry in a transaction of its own through a new connection (CLI)."""
    conn = sqlite3.connect(data_dir / STATE_FILE, isolation_level=None, timeout=10)
    try:
        with transaction_sync(conn):
            entry_id = record(conn, actor=actor, action=action, target=target, detail=detail,
                              source_address=source_address, outcome=outcome)
    finally:
        conn.close()
    return entry_id


# --- reading and verifying ----------------------------------------------------------------------


def _entry(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(id=row[0], at=row[1], actor=row[2], action=row[3], target=row[4],
                      source_address=row[5], outcome=row[6], detail=json.loads(row[7] or "{}"),
                      prev_hash=row[8], hash=row[9])


async def list_entries(store: StateStore, *, actor: str | None = None,
                       action: str | None = None, target: str | None = None,
                       outcome: str | None = None, since: float | None = None,
                       until: float | None = None, limit: int = 100,
                       before_id: int | None = None) -> list[AuditEntry]:
    """Entries, newest first, filtered (``action`` matches a prefix, e.g. ``auth.``)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("actor", actor), ("target", target), ("outcome", outcome)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if action:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                      + "%")
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if until is not None:
        where.append("at < ?")
        params.append(until)
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    sql = f"SELECT {_FIELDS} FROM audit_log"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(max(1, min(limit, 10_000)))
    return [_entry(r) for r in await store.fetchall(sql, params)]


def verify_rows(rows: Iterable[Sequence[Any]], checkpoints: Sequence[Checkpoint],
                public: Ed25519PublicKey | None, *, head: Head | None = None,
                saved_head: Head | None = None) -> VerifyResult:
    """Check the chain over ``rows`` (in id order), then the checkpoints and the signed head
    against it (read the head first: it may name only entries that ``rows`` holds).

    ``saved_head`` is a copy of the head kept elsewhere earlier: the log must still hold the
    entry it names, and the data dir's head must not be older (an older head file put back).
    """
    prev = ""
    expected_id = None
    hashes: dict[int, str] = {}
    count = 0
    for row in rows:
        count += 1
        entry_id, stored_prev, stored_hash = row[0], row[8], row[9]
        if not stored_hash:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=entry_id, reason="entry has no hash")
        if expected_id is not None and entry_id != expected_id:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=entry_id,
                                reason=f"entry {expected_id} is missing (ids jump to "
                                f"{entry_id})")
        if stored_prev != prev:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=entry_id,
                                reason="previous-hash link does not match the entry before "
                                "it (deleted or reordered rows)")
        if _row_hash(row, prev) != stored_hash:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=entry_id,
                                reason="content does not match its hash (edited row)")
        hashes[entry_id] = stored_hash
        prev = stored_hash
        expected_id = entry_id + 1
    last_id = expected_id - 1 if expected_id is not None else 0
    for cp in checkpoints:
        if public is not None:
            try:
                public.verify(base64.b64decode(cp.signature),
                              f"{cp.entry_id}:{cp.entry_hash}".encode())
            except Exception:
                return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                    first_broken_id=cp.entry_id,
                                    reason=f"checkpoint {cp.id} has a bad signature")
        if cp.entry_id > last_id:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=last_id + 1,
                                reason=f"checkpoint {cp.id} names entry {cp.entry_id} but the "
                                f"log ends at {last_id} (entries deleted from the end)")
        if hashes.get(cp.entry_id) != cp.entry_hash:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=cp.entry_id,
                                reason=f"entry {cp.entry_id} differs from its signed "
                                f"checkpoint {cp.id}")
    kid = None if public is None else key_id(public)
    if head is not None:
        broken = check_head(head, public, kid, last_id, hashes)
        if broken is not None:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=broken[0], reason=broken[1])
    if saved_head is not None:
        broken = check_head(saved_head, public, kid, last_id, hashes)
        if broken is None and head is not None and head.entry_id < saved_head.entry_id:
            broken = (head.entry_id + 1, f"{HEAD_FILE} names entry {head.entry_id}, before "
                      f"the saved head's {saved_head.entry_id} (an older head file was put "
                      "back)")
        if broken is not None:
            return VerifyResult(ok=False, entries=count, checkpoints=len(checkpoints),
                                first_broken_id=broken[0],
                                reason=f"against the saved head: {broken[1]}")
    if head is not None:
        return VerifyResult(ok=True, entries=count, checkpoints=len(checkpoints),
                            head=head.entry_id, note=since_note(head))
    return VerifyResult(ok=True, entries=count, checkpoints=len(checkpoints))


def _checkpoints(rows: Iterable[Sequence[Any]]) -> list[Checkpoint]:
    return [Checkpoint(id=r[0], entry_id=r[1], entry_hash=r[2], at=r[3], key_id=r[4],
                       signature=r[5]) for r in rows]


_CP_SQL = "SELECT id, entry_id, entry_hash, at, key_id, signature FROM audit_checkpoints " \
          "ORDER BY id"


def verify_sync(conn: sqlite3.Connection, data_dir: Path, *,
                saved_head: Head | None = None) -> VerifyResult:
    """Verify the chain of a data dir through a synchronous connection, and its signed head.

    A data dir with entries but no head (one from before signed heads) is not an error: the
    head is created here and the result's ``note`` says so.
    """
    try:
        head, head_error = read_head(data_dir), ""
    except ValueError as exc:
        head, head_error = None, str(exc)
    rows = conn.execute(f"SELECT {_FIELDS} FROM audit_log ORDER BY id")
    result = verify_rows(rows, _checkpoints(conn.execute(_CP_SQL).fetchall()),
                         public_key(data_dir), head=head, saved_head=saved_head)
    if not result.ok:
        return result
    if head_error:
        return msgspec.structs.replace(result, ok=False, first_broken_id=None,
                                       reason=head_error)
    # AUTOINCREMENT remembers the highest id ever inserted; a plain DELETE leaves it behind
    seq, last_id = conn.execute(
        "SELECT (SELECT seq FROM sqlite_sequence WHERE name='audit_log'),"
        " (SELECT max(id) FROM audit_log)").fetchone()
    if seq is not None and seq > (last_id or 0):
        end = last_id or 0
        return msgspec.structs.replace(
            result, ok=False, first_broken_id=end + 1,
            reason=f"entries {end + 1}-{seq} are missing: the table's sequence says entry "
            f"{seq} was written but the log ends at {end} (entries deleted from the end)")
    if head is None and result.entries:
        try:
            created = publish_head(data_dir)
        except OSError as exc:
            return msgspec.structs.replace(
                result, note=f"no signed head ({HEAD_FILE}) and it could not be created: "
                f"{exc}")
        if created is not None:
            return msgspec.structs.replace(
                result, head=created.entry_id,
                note=f"no signed head was found (a data dir from before signed heads, or "
                f"{HEAD_FILE} was removed): created it at entry {created.entry_id}; "
                "deletions from the end before now are covered by checkpoints only")
    return result


async def verify(store: StateStore) -> VerifyResult:
    """Verify the chain of the server's state (reads run off the loop)."""

    def run() -> VerifyResult:
        conn = sqlite3.connect(f"file:{store.data_dir / 'state.db'}?mode=ro", uri=True)
        try:
            return verify_sync(conn, store.data_dir)
        finally:
            conn.close()
    return await asyncio.to_thread(run)


def export_lines(conn: sqlite3.Connection, data_dir: Path) -> Iterator[str]:
    """JSON lines for offline verification: a header with the public key, entries, checkpoints
    and the signed head (ValueError before the first line when the head file is unreadable)."""
    head = read_head(data_dir)
    yield json.dumps({"type": "header", "format": "foundry-appliance-audit/1",
                      "public_key": public_key_pem(data_dir)})
    for row in conn.execute(f"SELECT {_FIELDS} FROM audit_log ORDER BY id"):
        yield json.dumps({"type": "entry", **msgspec.to_builtins(_entry(row)),
                          "detail_json": row[7]})
    for cp in _checkpoints(conn.execute(_CP_SQL).fetchall()):
        yield json.dumps({"type": "checkpoint", **msgspec.to_builtins(cp)})
    if head is not None:
        yield json.dumps({"type": "head", **msgspec.to_builtins(head)})


def verify_export(lines: Iterable[str], *, saved_head: Head | None = None) -> VerifyResult:
    """Verify an export file offline (the header's public key checks the checkpoints and the
    head; ``saved_head`` as for ``verify_rows``)."""
    rows: list[tuple[Any, ...]] = []
    cps: list[Checkpoint] = []
    public: Ed25519PublicKey | None = None
    head: Head | None = None
    for line in lines:
        if not line.strip():
            continue
        item = json.loads(line)
        if item["type"] == "header":
            loaded = serialization.load_pem_public_key(item["public_key"].encode())
            public = loaded if isinstance(loaded, Ed25519PublicKey) else None
        elif item["type"] == "entry":
            rows.append((item["id"], item["at"], item["actor"], item["action"],
                         item["target"], item["source_address"], item["outcome"],
                         item["detail_json"], item["prev_hash"], item["hash"]))
        elif item["type"] == "checkpoint":
            item.pop("type")
            cps.append(msgspec.convert(item, Checkpoint))
        elif item["type"] == "head":
            head = head_from_export(item)
    return verify_rows(rows, cps, public, head=head, saved_head=saved_head)
