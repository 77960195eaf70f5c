"""Sealing of the inventory's secrets (SSH keys, passwords, kubeconfigs) at rest.

Every secret column goes through ``seal``/``unseal`` only, so moving to the identity
component's keyring (``appliance.identity.secrets``, AES-256-GCM envelopes) is one edit here.
Until then: AES-256-GCM with a 256-bit key in ``<data_dir>/keys/cluster-secrets.key`` (mode
0600), a random 96-bit nonce per value, and the value's purpose bound as associated data so a
sealed password cannot be replayed as another host's key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.kernel.errors import ApplianceError

MAGIC = b"FAS1"
KEY_FILE = Path("keys") / "cluster-secrets.key"


class SecretError(ApplianceError, ValueError):
    """A sealed value that cannot be opened (wrong key, tampered, wrong purpose)."""

    code = "secret_error"


def _key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = AESGCM.generate_key(bit_length=256)
        # O_EXCL: when two processes race, one writes and both then read the same key
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as out:
            out.write(key)
    if len(key) != 32:
        raise SecretError(f"{path} is not a 256-bit key")
    return key


def seal(data_dir: Path, plaintext: bytes, *, purpose: str) -> bytes:
    """Encrypt ``plaintext`` for storage; ``purpose`` (e.g. ``host:gpu1``) is authenticated."""
    nonce = os.urandom(12)
    return MAGIC + nonce + AESGCM(_key(data_dir)).encrypt(nonce, plaintext, purpose.encode())


def unseal(data_dir: Path, sealed: bytes, *, purpose: str) -> bytes:
    """The plaintext of a value made by ``seal`` with the same ``purpose``."""
    if not sealed.startswith(MAGIC) or len(sealed) < len(MAGIC) + 12 + 16:
        raise SecretError(f"stored secret for {purpose} is not a sealed value")
    nonce = sealed[len(MAGIC):len(MAGIC) + 12]
    try:
        return AESGCM(_key(data_dir)).decrypt(nonce, sealed[len(MAGIC) + 12:], purpose.encode())
    except InvalidTag:
        raise SecretError(f"stored secret for {purpose} cannot be opened with this data "
                          "directory's key") from None
