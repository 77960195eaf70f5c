"""The data dir's Ed25519 key that signs the audit trail's checkpoints and its head."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNING_KEY_FILE = "audit-signing.key"


def key_id(public: Ed25519PublicKey) -> str:
    """``ed25519:`` and the first 16 hex digits of the raw public key's sha256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def signing_key(data_dir: Path) -> Ed25519PrivateKey:
    """The data dir's audit signing key, created (mode 0600) on first use; blocking."""
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        tmp = path.with_name(f"{SIGNING_KEY_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        # link, not rename: when two writers (server, CLI) create the key at once, the first
        # one wins and the other signs with it instead of replacing it
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        os.unlink(tmp)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def public_key(data_dir: Path) -> Ed25519PublicKey | None:
    """The public half of the data dir's signing key, or None when it has none yet."""
    if not (data_dir / SIGNING_KEY_FILE).exists():
        return None
    return signing_key(data_dir).public_key()


def public_key_pem(data_dir: Path) -> str:
    """The PEM public key that verifies this data dir's checkpoints and head."""
    return signing_key(data_dir).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
