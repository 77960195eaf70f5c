"""Secrets at rest: AES-256-GCM envelope encryption under a master key kept outside the database.

Each secret gets its own random data key (DEK); the DEK is encrypted ("wrapped") with the
master key (KEK) and stored beside the ciphertext::

    enc1.<master key id>.<b64 nonce+wrapped DEK>.<b64 nonce+ciphertext>

The master key is, in order of preference: ``APPLIANCE_MASTER_KEY`` (base64 of 32 bytes),
a key derived with scrypt from ``APPLIANCE_MASTER_PASSPHRASE`` (salt in ``master.salt``), or
the key ring file ``master.key`` (mode 0600) in the data directory, created on first use. A
copy of ``state.db`` without that key cannot be read. Secrets live in the database columns of
``SECRET_COLUMNS`` and in the files of ``SECRET_FILES`` (one envelope per file: the engine
hosts' tokens). ``rotate_master`` re-wraps every DEK of both under a new master key; the key
ring holds both keys until all of them are re-wrapped and durable, so a running server keeps
decrypting throughout (it re-reads the ring on an unknown key id) and a rotation cut short
at any step leaves everything readable.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.kernel.errors import ApplianceError
from appliance.store.state import transaction_sync

log = logging.getLogger(__name__)
PREFIX = "enc1."
KEYRING_FILE = "master.key"
SALT_FILE = "master.salt"
MASTER_KEY_ENV = "APPLIANCE_MASTER_KEY"
MASTER_PASSPHRASE_ENV = "APPLIANCE_MASTER_PASSPHRASE"
# Every column holding a secret: (table, primary key column, secret column, purpose). The
# purpose is authenticated data, so a ciphertext moved to another column does not decrypt.
SECRET_COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("upstreams", "name", "api_key", "upstreams.api_key"),
    ("hosts", "name", "secret", "hosts.secret"),
    ("clusters", "name", "kubeconfig", "clusters.kubeconfig"),
)
ENGINE_TOKEN_DIR = "keys/engine-tokens"
# Every directory whose files each hold one envelope: (directory under the data dir, purpose).
SECRET_FILES: tuple[tuple[str, str], ...] = (
    (ENGINE_TOKEN_DIR, "engine_hosts.token"),
)
# a rotation writes a directory's re-wrapped files into this sibling first (same file system,
# so moving them over the old ones is one atomic rename each)
STAGING_SUFFIX = ".rotating"


class SecretError(ApplianceError):
    """A secret cannot be decrypted (missing or wrong master key, damaged value)."""

    status = 500
    code = "secret_unreadable"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"appliance-master:" + key).hexdigest()[:12]


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with a 0600 file: temp file, fsync, rename; blocking."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)



class Keyring:
    """Master keys by id and which one wraps new secrets."""

    def __init__(self, keys: Mapping[str, bytes], primary: str, *, path: Path | None) -> None:
        self.keys = dict(keys)
        self.primary = primary
        self.path = path  # None when the key comes from the environment

    @classmethod
    def load(cls, data_dir: Path, environ: Mapping[str, str] | None = None,
             *, create: bool = True) -> Keyring:
        """The data dir's master key (env first, then the key ring file); blocking."""
        env = os.environ if environ is None else environ
        if env.get(MASTER_KEY_ENV):
            try:
                key = base64.b64decode(env[MASTER_KEY_ENV], validate=True)
            except ValueError:
                raise SecretError(f"{MASTER_KEY_ENV} is not base64") from None
            if len(key) != 32:
                raise SecretError(f"{MASTER_KEY_ENV} must hold 32 bytes (base64)")
            return cls({key_id(key): key}, key_id(key), path=None)
        if env.get(MASTER_PASSPHRASE_ENV):
            salt_path = data_dir / SALT_FILE
            if not salt_path.exists():
                write_private(salt_path, os.urandom(16))
            key = hashlib.scrypt(env[MASTER_PASSPHRASE_ENV].encode(),
                                 salt=salt_path.read_bytes(), n=2**15, r=8, p=1,
                                 maxmem=64 * 1024 * 1024, dklen=32)
            return cls({key_id(key): key}, key_id(key), path=None)
        path = data_dir / KEYRING_FILE
        if not path.exists():
            if not create:
                raise SecretError(f"no master key: {path} is missing and neither "
                                  f"{MASTER_KEY_ENV} nor {MASTER_PASSPHRASE_ENV} is set")
            key = AESGCM.generate_key(bit_length=256)
            ring = cls({key_id(key): key}, key_id(key), path=path)
            ring.save()
            return ring
        raw = json.loads(path.read_text())
        return cls({k: _unb64(v) for k, v in raw["keys"].items()}, raw["primary"], path=path)

    def save(self) -> None:
        if self.path is None:
            raise SecretError("the master key comes from the environment; change it there")
        body = {"primary": self.primary, "keys": {k: _b64(v) for k, v in self.keys.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(body).encode())

    # --- envelopes ---

    def seal(self, plaintext: str, purpose: str) -> str:
        """Encrypt ``plaintext`` under a fresh DEK wrapped by the primary master key."""
        if not plaintext:
            return ""
        dek = AESGCM.generate_key(bit_length=256)
        n1, n2 = os.urandom(12), os.urandom(12)
        wrapped = AESGCM(self.keys[self.primary]).encrypt(n1, dek, self.primary.encode())
        body = AESGCM(dek).encrypt(n2, plaintext.encode(), purpose.encode())
        return f"{PREFIX}{self.primary}.{_b64(n1 + wrapped)}.{_b64(n2 + body)}"

    def _unwrap(self, kid: str, wrapped: str) -> bytes:
        kek = self.keys.get(kid)
        if kek is None:
            raise SecretError(f"secret is wrapped by master key {kid}, which this key ring "
                              "does not hold")
        raw = _unb64(wrapped)
        try:
            return AESGCM(kek).decrypt(raw[:12], raw[12:], kid.encode())
        except InvalidTag:
            raise SecretError("secret does not decrypt under the master key") from None

    def open(self, value: str, purpose: str) -> str:
        """Decrypt an envelope; a value without the prefix is legacy plaintext, returned as is."""
        if not value.startswith(PREFIX):
            return value
        try:
            kid, wrapped, body = value[len(PREFIX):].split(".")
        except ValueError:
            raise SecretError("damaged secret envelope") from None
        dek = self._unwrap(kid, wrapped)
        raw = _unb64(body)
        try:
            return AESGCM(dek).decrypt(raw[:12], raw[12:], purpose.encode()).decode()
        except InvalidTag:
            raise SecretError("secret does not decrypt (damaged or moved value)") from None

    def rewrap(self, value: str, purpose: str) -> str:
        """The same secret with its DEK wrapped by the primary key (plaintext gets sealed)."""
        if not value:
            return value
        if not value.startswith(PREFIX):
            return self.seal(value, purpose)
        kid, wrapped, body = value[len(PREFIX):].split(".")
        if kid == self.primary:
            return value
        dek = self._unwrap(kid, wrapped)
        n1 = os.urandom(12)
        new = AESGCM(self.keys[self.primary]).encrypt(n1, dek, self.primary.encode())
        return f"{PREFIX}{self.primary}.{_b64(n1 + new)}.{body}"


class SecretBox:
    """Seals and opens secrets for one data directory; reloads the key ring when it changes."""

    def __init__(self, data_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self._environ = environ
        self._ring: Keyring | None = None

    def ring(self, *, reload: bool = False) -> Keyring:
        if self._ring is None or reload:
            self._ring = Keyring.load(self.data_dir, self._environ)
        return self._ring

    def seal(self, plaintext: str, purpose: str) -> str:
        # re-read: after a rotation by another process new secrets must use the new key
        return self.ring(reload=True).seal(plaintext, purpose)

    def open(self, value: str, purpose: str) -> str:
        try:
            return self.ring().open(value, purpose)
        except SecretError:
            # rotated by another process since we loaded the ring: read it again once
            return self.ring(reload=True).open(value, purpose)

    async def seal_async(self, plaintext: str, purpose: str) -> str:
        return await asyncio.to_thread(self.seal, plaintext, purpose)

    async def open_async(self, values: list[str], purpose: str) -> list[str]:
        return await asyncio.to_thread(lambda: [self.open(v, purpose) for v in values])


def seal_plaintext(conn: sqlite3.Connection, ring: Keyring) -> int:
    """Encrypt secrets still stored in plaintext (data dirs from before encryption)."""
    changed = 0
    for table, pk, column, purpose in SECRET_COLUMNS:
        rows = conn.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} != '' AND "
                            f"{column} NOT LIKE '{PREFIX}%'").fetchall()
        for row in rows:
            conn.execute(f"UPDATE {table} SET {column}=? WHERE {pk}=?",
                         (ring.seal(row[1], purpose), row[0]))
            changed += 1
    return changed


class Rotation(msgspec.Struct, kw_only=True, frozen=True):
    """What ``rotate_master`` did."""

    old_key: str
    new_key: str
    rewrapped: int  # secrets re-wrapped, rows and files together
    files: int  # of which files (SECRET_FILES)
    # files no key of the ring opens (damaged, or left under a key an older version dropped):
    # left as they are, named relative to the data dir
    unreadable_files: list[str] = []


def _rewrap_columns(conn: sqlite3.Connection, ring: Keyring) -> int:
    """Re-wrap every column secret not yet under the primary key; inside a transaction."""
    changed = 0
    for table, pk, column, purpose in SECRET_COLUMNS:
        for row in conn.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} != ''"
                                ).fetchall():
            value = ring.rewrap(row[1], purpose)
            if value != row[1]:
                conn.execute(f"UPDATE {table} SET {column}=? WHERE {pk}=?", (value, row[0]))
                changed += 1
    return changed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage_files(data_dir: Path, ring: Keyring) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Write each file secret not yet under the primary key, re-wrapped, into the staging
    directory beside its own (0600, fsynced); the old files stay untouched.

    Returns (staged file, file it replaces) pairs and the files no key of the ring opens.
    """
    staged: list[tuple[Path, Path]] = []
    unreadable: list[str] = []
    for rel, purpose in SECRET_FILES:
        folder = data_dir / rel
        staging = folder.with_name(folder.name + STAGING_SUFFIX)
        shutil.rmtree(staging, ignore_errors=True)  # left by a rotation cut short
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            if path.name.endswith(".tmp"):
                continue  # a write in progress (write_private)
            value = path.read_text()
            try:
                rewrapped = ring.rewrap(value, purpose)
            except (SecretError, ValueError):
                unreadable.append(str(path.relative_to(data_dir)))
                continue
            if rewrapped == value:
                continue
            staging.mkdir(mode=0o700, exist_ok=True)
            write_private(staging / path.name, rewrapped.encode())
            staged.append((staging / path.name, path))
    return staged, unreadable


def _swap_files(staged: list[tuple[Path, Path]]) -> None:
    """Move staged files over the old ones (one atomic rename each), make the renames
    durable and remove the staging directories."""
    for new, old in staged:
        os.replace(new, old)
    for folder in {old.parent for _, old in staged}:
        _fsync_dir(folder)
    for staging in {new.parent for new, _ in staged}:
        shutil.rmtree(staging, ignore_errors=True)


def rotate_master(conn: sqlite3.Connection, data_dir: Path) -> Rotation:
    """Make a new master key primary and re-wrap every DEK under it; drop the old key.

    The order keeps every secret readable if the rotation stops at any step (crash, error):

    1. the ring gets the new key as primary *beside* the old one (saved, fsynced);
    2. each secret file not under the new key is re-wrapped into a staging directory beside
       its own (fsynced); the files in use are untouched;
    3. the columns are re-wrapped and the audit entry recorded in one transaction;
    4. the staged files are renamed over the old ones (atomic each), directories fsynced;
    5. a sweep re-wraps what a running server sealed under the old ring meanwhile;
    6. only then the ring drops every key but the new one.

    Until step 6 the ring opens both old and new envelopes, so a mix left by a stop in
    between is readable, and the next rotation finishes the job (a staging directory left
    behind is discarded: its originals are still in place).
    """
    from appliance.identity import audit

    ring = Keyring.load(data_dir)
    if ring.path is None:
        raise SecretError("the master key comes from the environment; rotate it there "
                          "(re-encrypt by starting once with the new key and "
                          "`appliance secrets rotate-master` is not needed)")
    old = ring.primary
    new_key = AESGCM.generate_key(bit_length=256)
    new = key_id(new_key)
    ring.keys[new] = new_key
    ring.primary = new
    ring.save()  # 1. both keys: anything wrapped by either still opens
    staged, unreadable = _stage_files(data_dir, ring)  # 2.
    try:
        with transaction_sync(conn):  # 3.
            count = _rewrap_columns(conn, ring)
            audit.record(conn, actor=audit.cli_actor(), action="secrets.rotate_master",
                         target="master.key",
                         detail={"old": old, "new": new, "rewrapped": count + len(staged),
                                 "files": len(staged), "unreadable_files": unreadable})
    except BaseException:
        # rolled back: the files in use were never touched, drop what was staged
        for staging in {new_path.parent for new_path, _ in staged}:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_files(staged)  # 4.
    # 5. a server that loaded the ring before step 1 may have sealed under the old key since
    late_files, late_unreadable = _stage_files(data_dir, ring)
    _swap_files(late_files)
    with transaction_sync(conn):
        late_rows = _rewrap_columns(conn, ring)
    if late_files or late_rows:
        log.warning("re-wrapped %d secrets sealed under the old master key during the rotation",
                    len(late_files) + late_rows)
    ring.keys = {new: new_key}  # 6.
    ring.save()
    files = len(staged) + len(late_files)
    return Rotation(old_key=old, new_key=new, rewrapped=count + late_rows + files, files=files,
                    unreadable_files=sorted(set(unreadable) | set(late_unreadable)))
