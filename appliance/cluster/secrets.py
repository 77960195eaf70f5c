"""Sealing of the inventory's secrets (SSH keys, passwords, kubeconfigs, engine tokens).

Every secret of this component goes through ``seal``/``unseal`` only; they use the identity
component's envelope encryption (``appliance.identity.secrets``: AES-256-GCM, a data key per
value wrapped by the data dir's master key). The purpose names the column, so a sealed
password does not open as a kubeconfig, and ``rotate_master`` can re-wrap every value:
the columns named in ``SECRET_COLUMNS`` and the files under the directories of
``SECRET_FILES`` (engine tokens), so a new kind of sealed value must be added there.
"""

from __future__ import annotations

from pathlib import Path

from appliance.identity.secrets import ENGINE_TOKEN_DIR, SecretBox, write_private

HOST_SECRET = "hosts.secret"
CLUSTER_KUBECONFIG = "clusters.kubeconfig"
ENGINE_TOKEN = "engine_hosts.token"  # the files under ENGINE_TOKEN_DIR (identity.SECRET_FILES)
__all__ = ["CLUSTER_KUBECONFIG", "ENGINE_TOKEN", "ENGINE_TOKEN_DIR", "HOST_SECRET", "seal",
           "unseal", "write_sealed_file"]


async def seal(data_dir: Path, plaintext: str, *, purpose: str) -> str:
    """Encrypt ``plaintext`` for storage (an ``enc1.`` envelope)."""
    return await SecretBox(data_dir).seal_async(plaintext, purpose)


async def unseal(data_dir: Path, sealed: str | bytes, *, purpose: str) -> str:
    """The plaintext of a value made by ``seal`` with the same ``purpose``."""
    value = sealed.decode() if isinstance(sealed, bytes) else sealed
    return (await SecretBox(data_dir).open_async([value], purpose))[0]


def write_sealed_file(path: Path, sealed: str) -> None:
    """Store a sealed value as its own file (0600, atomic: never half-written); blocking."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, sealed.encode())
