"""The signed head of the audit trail: the newest entry's id and hash, kept outside state.db.

Checkpoints live in the database, so rows deleted after the last checkpoint leave nothing
behind in it. The head (``<data dir>/audit-head.json``) names the newest committed entry and
is signed with the checkpoints' key, so someone who can write state.db but not sign cannot
make the log end earlier than the head says. It is rewritten (temp file, fsync, rename) after
each transaction that recorded entries, never before the commit: a head must only name an
entry that exists, so a rolled-back write cannot look like tampering.

The signed message starts with ``audit-head:`` so that a checkpoint's signature (over
``"<id>:<hash>"``) can never pass as a head.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.identity.audit_signing import key_id, signing_key
from appliance.store.state import STATE_FILE, after_commit

log = logging.getLogger(__name__)
HEAD_FILE = "audit-head.json"
HEAD_LOCK_FILE = "audit-head.lock"
HEAD_FORMAT = "foundry-appliance-audit-head/1"


class Head(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The newest entry the trail is known to hold, signed."""

    format: str
    entry_id: int
    entry_hash: str
    at: float  # when this head was written
    # entries up to ``since`` were written before there was a head (a data dir from an older
    # version, or one whose head file was removed): only the chain and checkpoints cover them
    since: int
    since_at: float
    key_id: str
    signature: str


_decode_head = msgspec.json.Decoder(Head).decode


def _message(format: str, entry_id: int, entry_hash: str, at: float, since: int,
             since_at: float) -> bytes:
    body = json.dumps([format, entry_id, entry_hash, at, since, since_at],
                      separators=(",", ":"), ensure_ascii=True)
    return b"audit-head:" + body.encode()


def sign_head(key: Ed25519PrivateKey, key_id: str, *, entry_id: int, entry_hash: str,
              since: int, since_at: float | None = None) -> Head:
    """A head naming ``entry_id``/``entry_hash``, signed with the checkpoint key."""
    at = time.time()
    since_at = at if since_at is None else since_at
    signature = key.sign(_message(HEAD_FORMAT, entry_id, entry_hash, at, since, since_at))
    return Head(format=HEAD_FORMAT, entry_id=entry_id, entry_hash=entry_hash, at=at,
                since=since, since_at=since_at, key_id=key_id,
                signature=base64.b64encode(signature).decode())


def signature_ok(head: Head, public: Ed25519PublicKey) -> bool:
    """Whether ``head`` was signed by ``public``'s private key, every field included."""
    if head.format != HEAD_FORMAT:
        return False
    try:
        public.verify(base64.b64decode(head.signature),
                      _message(head.format, head.entry_id, head.entry_hash, head.at,
                               head.since, head.since_at))
    except (InvalidSignature, ValueError):
        return False
    return True


def load_head(path: Path) -> Head:
    """A head file (the data dir's, or a copy kept elsewhere); ValueError when unreadable."""
    try:
        return _decode_head(path.read_bytes())
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path.name} is unreadable: {exc}") from None


def read_head(data_dir: Path) -> Head | None:
    """The data dir's head, or None when it has none; ValueError when it is unreadable."""
    try:
        return load_head(data_dir / HEAD_FILE)
    except FileNotFoundError:
        return None


def head_from_export(item: Mapping[str, object]) -> Head:
    """A head from an export line (``{"type": "head", ...}``)."""
    return msgspec.convert({k: v for k, v in item.items() if k != "type"}, Head)


def write_head(data_dir: Path, head: Head) -> None:
    """Replace the head file atomically: temp file, fsync, rename, fsync of the directory."""
    path = data_dir / HEAD_FILE
    tmp = path.with_name(f"{HEAD_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(msgspec.json.encode(head) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def head_lock(data_dir: Path) -> Iterator[None]:
    """Serialise head updates of every process on this data dir (server, CLI)."""
    fd = os.open(data_dir / HEAD_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --- keeping it up to date ---------------------------------------------------------------------

# entries committed by a caller's own BEGIN/COMMIT, outside an after_commit hook: data dir ->
# the last entry before them; published by the next head update of that data dir or at exit
_unpublished: dict[Path, int] = {}
_unpublished_lock = threading.Lock()


def publish_head(data_dir: Path, *, since: int | None = None) -> Head | None:
    """Move the signed head to the newest committed entry, creating it when missing; blocking.

    Safe to call at any time: it reads committed rows only, and it never moves the head back
    or onto entries that differ from the ones it names, so a head the log disagrees with stays
    in place as evidence for ``verify``. ``since``: for a new head, the last entry written
    before the writer that creates it (default: the newest entry).
    """
    db = data_dir / STATE_FILE
    if not db.exists():
        return None
    with _unpublished_lock:
        _unpublished.pop(data_dir, None)
    with head_lock(data_dir):
        try:
            current = read_head(data_dir)
        except ValueError as exc:
            log.warning("audit head not moved: %s", exc)
            return None
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            last = conn.execute(
                "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
            at_head = None if current is None else conn.execute(
                "SELECT hash FROM audit_log WHERE id=?", (current.entry_id,)).fetchone()
        finally:
            conn.close()
        if last is None or not last[1]:
            return current  # nothing yet, or rows the next write seals first
        key = signing_key(data_dir)
        kid = key_id(key.public_key())
        if current is None:
            first = last[0] if since is None else max(0, min(since, last[0]))
            head = sign_head(key, kid, entry_id=last[0], entry_hash=last[1], since=first)
        elif (current.key_id != kid or not signature_ok(current, key.public_key())
              or at_head is None or at_head[0] != current.entry_hash):
            log.warning("audit head not moved: %s names entry %d, which the log does not hold "
                        "as signed (`appliance audit verify` reports it)", HEAD_FILE,
                        current.entry_id)
            return current
        elif last[0] <= current.entry_id:
            return current
        else:
            head = sign_head(key, kid, entry_id=last[0], entry_hash=last[1],
                             since=current.since, since_at=current.since_at)
        # every connection to state.db commits with synchronous=FULL (store.state), so what
        # the head names is on disk already. Never open state.db's files here with os.open:
        # closing such a descriptor drops this process's SQLite locks (POSIX advisory locks
        # belong to the process), and another process then deletes the WAL under the server.
        write_head(data_dir, head)
        return head


def publish_pending() -> None:
    """Publish the heads of entries committed outside an after_commit hook (runs at exit)."""
    with _unpublished_lock:
        pending = dict(_unpublished)
        _unpublished.clear()
    for data_dir, since in pending.items():
        try:
            publish_head(data_dir, since=since)
        except Exception:
            log.exception("could not update the signed audit head of %s", data_dir)


atexit.register(publish_pending)


def schedule_head(data_dir: Path, entry_id: int) -> None:
    """Have the head follow once the transaction that wrote ``entry_id`` has committed."""
    since = entry_id - 1
    if after_commit(("audit-head", data_dir),
                    functools.partial(publish_head, data_dir, since=since)):
        return
    with _unpublished_lock:
        _unpublished[data_dir] = min(_unpublished.get(data_dir, since), since)


# --- checking it --------------------------------------------------------------------------------


def check_head(head: Head, public: Ed25519PublicKey | None, key_id: str | None,
               last_id: int, hashes: Mapping[int, str]) -> tuple[int, str] | None:
    """(first broken entry id, reason) when the log disagrees with the signed head."""
    if public is None:
        return head.entry_id, (f"{HEAD_FILE} is signed but the signing key is missing, so it "
                               "cannot be checked")
    if key_id is not None and head.key_id != key_id:
        return head.entry_id, (f"{HEAD_FILE} is signed by key {head.key_id}, not by this "
                               f"data dir's key {key_id}")
    if not signature_ok(head, public):
        return head.entry_id, f"{HEAD_FILE} has a bad signature (edited or forged)"
    if head.entry_id > last_id:
        missing = (f"entry {head.entry_id}" if head.entry_id == last_id + 1
                   else f"entries {last_id + 1}-{head.entry_id}")
        return last_id + 1, (f"{missing} missing: the signed head names entry "
                             f"{head.entry_id} (written {_when(head.at)}) but the log ends at "
                             f"{last_id} (entries deleted from the end)")
    if hashes.get(head.entry_id) != head.entry_hash:
        return head.entry_id, (f"entry {head.entry_id} differs from the signed head "
                               "(entries replaced after it was written)")
    return None


def since_note(head: Head) -> str:
    """What a head created after the first entry does not cover, for the verify result."""
    if head.since <= 0:
        return ""
    return (f"the signed head was (re)created at entry {head.since} on {_when(head.since_at)} "
            "(a data dir from before signed heads, or its head file was removed): deletions "
            "from the end before then are covered by checkpoints only")


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
