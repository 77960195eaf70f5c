"""Secrets at rest: AES-256-GCM envelope encryption under a master key kept outside the database.

Each secret gets its own random data key (DEK); the DEK is encrypted ("wrapped") with the
master key (KEK) and stored beside the ciphertext::

    enc1.<master key id>.<b64 nonce+wrapped DEK>.<b64 nonce+ciphertext>

The master key is, in order of preference: ``APPLIANCE_MASTER_KEY`` (base64 of 32 bytes),
a key derived with scrypt from ``APPLIANCE_MASTER_PASSPHRASE`` (salt in ``master.salt``), or
the key ring file ``master.key`` (mode 0600) in the data directory, created on first use. A
copy of ``state.db`` without that key cannot be read. ``rotate_master`` re-wraps every DEK
under a new master key in one transaction; the key ring holds both keys meanwhile, so a
running server keeps decrypting throughout (it re-reads the ring on an unknown key id).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.kernel.errors import ApplianceError

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


def _write_private(path: Path, data: bytes) -> None:
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
                _write_private(salt_path, os.urandom(16))
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
        _write_private(self.path, json.dumps(body).encode())

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


def rotate_master(conn: sqlite3.Connection, data_dir: Path) -> tuple[str, str, int]:
    """Make a new master key primary and re-wrap every DEK under it; drop the old key.

    Returns (old key id, new key id, secrets re-wrapped). Each step leaves the data readable:
    the ring holds both keys until every row is re-wrapped and committed.
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
    ring.save()  # both keys: anything wrapped by either still opens
    count = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, pk, column, purpose in SECRET_COLUMNS:
            for row in conn.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} != ''"
                                    ).fetchall():
                conn.execute(f"UPDATE {table} SET {column}=? WHERE {pk}=?",
                             (ring.rewrap(row[1], purpose), row[0]))
                count += 1
        audit.record(conn, actor=audit.cli_actor(), action="secrets.rotate_master",
                     target="master.key", detail={"old": old, "new": new, "rewrapped": count})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    ring.keys = {new: new_key}
    ring.save()
    return old, new, count
