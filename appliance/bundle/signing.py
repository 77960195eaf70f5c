"""Ed25519 signatures over the exact bytes of ``bundle.json``.

A key pair is ``PREFIX.key`` (PKCS#8 PEM, mode 0600) and ``PREFIX.pub`` (SubjectPublicKeyInfo
PEM). A signed bundle carries ``bundle.json.sig``, a small JSON document naming the key and
holding the base64 signature. The manifest lists the sha256 of every other file, so the one
signature covers the whole bundle.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import time
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.identity import audit
from appliance.kernel.errors import ApplianceError, BadRequest

SIGNATURE_FILE = "bundle.json.sig"
ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096


class SignatureError(ApplianceError, PermissionError):
    """The bundle's signature is missing, does not verify, or comes from an untrusted key."""

    status = 403
    code = "bundle_signature"


class BundleSignature(msgspec.Struct, forbid_unknown_fields=True):
    algorithm: str
    key_id: str
    signature: str  # base64


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: sha256 of its raw 32 bytes, 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def generate_keypair(prefix: Path) -> tuple[Path, Path, str]:
    """Write ``PREFIX.key`` and ``PREFIX.pub``; refuse to overwrite; return (key, pub, id)."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists():
            raise BadRequest(f"{path} exists; choose another --out prefix")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_text(public_pem(private.public_key()))
    return key_path, pub_path, key_id(private.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise BadRequest(f"signing key {path} does not exist") from None
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadRequest(f"{path} is not an Ed25519 key")
    return key


def load_public_key(data: bytes, *, name: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BadRequest(f"{name} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadRequest(f"{name} is not an Ed25519 public key")
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    try:
        return load_public_key(path.read_bytes(), name=str(path))
    except FileNotFoundError:
        raise BadRequest(f"public key {path} does not exist") from None


def sign_manifest(private: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    """The contents of ``bundle.json.sig`` for these exact manifest bytes."""
    sig = BundleSignature(algorithm=ALGORITHM, key_id=key_id(private.public_key()),
                          signature=base64.b64encode(private.sign(manifest_bytes)).decode())
    return msgspec.json.format(msgspec.json.encode(sig)) + b"\n"


def verify_manifest(manifest_bytes: bytes, signature_bytes: bytes | None,
                    trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check the signature against the trusted keys; return the signer's key id."""
    if signature_bytes is None:
        raise SignatureError(f"the bundle is not signed (no {SIGNATURE_FILE}); import it with "
                             "--allow-unsigned only if you trust how it reached you")
    try:
        sig = msgspec.json.decode(signature_bytes, type=BundleSignature)
        raw = base64.b64decode(sig.signature, validate=True)
    except (msgspec.DecodeError, ValueError) as exc:
        raise SignatureError(f"{SIGNATURE_FILE} is malformed: {exc}") from None
    if sig.algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_FILE}: unsupported algorithm {sig.algorithm!r}")
    public = trusted.get(sig.key_id)
    if public is None:
        raise SignatureError(f"the bundle is signed by key {sig.key_id}, which is not trusted "
                             "here; add its public key with `appliance bundle trust KEY.pub`")
    try:
        public.verify(raw, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"the signature by key {sig.key_id} does not match bundle.json: "
                             "the manifest was altered or the signature swapped") from None
    return sig.key_id


# --- the site's trusted keys (state database) --------------------------------------------------


def trusted_keys(conn: sqlite3.Connection) -> dict[str, Ed25519PublicKey]:
    """Every trusted signing key in this data directory, by key id."""
    rows = conn.execute("SELECT key_id, public_key FROM trusted_keys").fetchall()
    return {r[0]: load_public_key(r[1].encode()) for r in rows}


def trust_key(conn: sqlite3.Connection, public: Ed25519PublicKey, *, name: str,
              actor: str) -> tuple[str, bool]:
    """Add a trusted key and audit it; return (key id, whether it was new)."""
    kid = key_id(public)
    conn.execute("BEGIN IMMEDIATE")
    try:
        cur = conn.execute(
            "INSERT OR IGNORE INTO trusted_keys (key_id, public_key, name, added_at, added_by)"
            " VALUES (?,?,?,?,?)", (kid, public_pem(public), name, time.time(), actor))
        added = cur.rowcount == 1
        if added:
            audit.record(conn, actor=actor, action="bundle.trust_key", target=kid,
                         detail={"name": name})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return kid, added
