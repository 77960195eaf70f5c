"""Host inventory: the hosts the appliance manages, their credentials, keys and facts."""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path
from typing import Any, Literal

import msgspec

from appliance.cluster.secrets import HOST_SECRET, seal, unseal
from appliance.kernel.errors import BadRequest, Conflict, NotFound
from appliance.store.state import StateStore

HOST_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
Role = Literal["server", "agent", "gpu"]
ROLES = ("server", "agent", "gpu")


class HostInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A host as an operator adds it (API body; the CLI builds the same)."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    private_key: str = ""  # OpenSSH/PEM private key text
    password: str = ""
    jump_host: str | None = None
    role: Role = "gpu"
    labels: dict[str, str] = {}


class Host(msgspec.Struct, kw_only=True):
    """A host as stored (never its secret)."""

    name: str
    address: str
    port: int
    user: str
    auth: Literal["key", "password"]
    jump_host: str | None
    role: str
    labels: dict[str, str]
    facts: dict[str, Any]
    facts_at: float | None
    host_key_fingerprint: str | None = None
    offered_fingerprint: str | None = None
    created_at: float = 0.0


class Credentials(msgspec.Struct, frozen=True, kw_only=True):
    """What the executor needs to log in; lives only in memory."""

    private_key: str = ""
    password: str = ""


class HostKeyRecord(msgspec.Struct, kw_only=True):
    public_key: str | None
    fingerprint: str | None
    offered_key: str | None
    offered_fingerprint: str | None


def check_host_input(host: HostInput) -> None:
    """Raise BadRequest naming the first field that cannot be used."""
    if not HOST_NAME_RE.match(host.name):
        raise BadRequest("host name must be lowercase letters, digits and '-' (a DNS label)",
                         param="name")
    address = host.address.strip()
    if not address or any(c in address for c in " /@"):
        raise BadRequest("address must be an IP address or a host name", param="address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", address):
            raise BadRequest(f"address {address!r} is not an IP address or host name",
                             param="address") from None
    if not 0 < host.port < 65536:
        raise BadRequest("port must be 1-65535", param="port")
    if not re.match(r"^[a-z_][a-z0-9_.-]*$", host.user):
        raise BadRequest("user must be a POSIX user name", param="user")
    if bool(host.private_key) == bool(host.password):
        raise BadRequest("give either a private key or a password", param="private_key")
    if host.private_key and "PRIVATE KEY" not in host.private_key:
        raise BadRequest("private_key is not a PEM/OpenSSH private key", param="private_key")
    if host.role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    if host.jump_host == host.name:
        raise BadRequest("a host cannot be its own jump host", param="jump_host")


def _row_to_host(row: Any) -> Host:
    keys = row.keys()
    return Host(name=row["name"], address=row["address"], port=row["port"], user=row["user"],
                auth=row["auth"], jump_host=row["jump_host"], role=row["role"],
                labels=msgspec.json.decode(row["labels"]),
                facts=msgspec.json.decode(row["facts"]), facts_at=row["facts_at"],
                host_key_fingerprint=row["fingerprint"] if "fingerprint" in keys else None,
                offered_fingerprint=(row["offered_fingerprint"]
                                     if "offered_fingerprint" in keys else None),
                created_at=row["created_at"])


_SELECT = ("SELECT h.*, k.fingerprint, k.offered_fingerprint FROM hosts h"
           " LEFT JOIN host_keys k ON k.host = h.name")


async def add_host(store: StateStore, data_dir: Path, host: HostInput, *,
                   replace: bool = False) -> Host:
    """Record a host with its sealed secret; a name in use is a conflict unless ``replace``."""
    check_host_input(host)
    if host.jump_host and not await store.fetchone("SELECT 1 FROM hosts WHERE name=?",
                                                   (host.jump_host,)):
        raise BadRequest(f"jump host {host.jump_host!r} is not in the inventory",
                         param="jump_host")
    auth = "key" if host.private_key else "password"
    secret = await seal(data_dir, host.private_key or host.password, purpose=HOST_SECRET)
    now = time.time()
    async with store.transaction() as conn:
        cur = await conn.execute("SELECT address, port FROM hosts WHERE name=?", (host.name,))
        existing = await cur.fetchone()
        if existing and not replace:
            raise Conflict(f"host {host.name!r} exists; remove it first or replace it",
                           param="name")
        await conn.execute(
            "INSERT INTO hosts (name, address, port, user, auth, secret, jump_host, role, labels,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(name) DO UPDATE SET address=excluded.address, port=excluded.port,"
            " user=excluded.user, auth=excluded.auth, secret=excluded.secret,"
            " jump_host=excluded.jump_host, role=excluded.role, labels=excluded.labels,"
            " updated_at=excluded.updated_at",
            (host.name, host.address.strip(), host.port, host.user, auth, secret,
             host.jump_host, host.role, msgspec.json.encode(host.labels).decode(), now, now))
        if existing and (existing["address"], existing["port"]) != (host.address, host.port):
            # a new address is a new machine as far as its key goes
            await conn.execute("DELETE FROM host_keys WHERE host=?", (host.name,))
    return await get_host(store, host.name)


async def get_host(store: StateStore, name: str) -> Host:
    row = await store.fetchone(_SELECT + " WHERE h.name=?", (name,))
    if row is None:
        raise NotFound(f"no host {name!r} in the inventory", param="name")
    return _row_to_host(row)


async def list_hosts(store: StateStore) -> list[Host]:
    return [_row_to_host(r) for r in await store.fetchall(_SELECT + " ORDER BY h.name")]


async def remove_host(store: StateStore, name: str) -> None:
    used = await store.fetchone("SELECT name FROM hosts WHERE jump_host=?", (name,))
    if used:
        raise BadRequest(f"host {name!r} is the jump host of {used['name']!r}", param="name")
    if await store.execute("DELETE FROM hosts WHERE name=?", (name,)) == 0:
        raise NotFound(f"no host {name!r} in the inventory", param="name")


async def credentials(store: StateStore, data_dir: Path, name: str) -> Credentials:
    """Unseal a host's secret for one connection."""
    row = await store.fetchone("SELECT auth, secret FROM hosts WHERE name=?", (name,))
    if row is None:
        raise NotFound(f"no host {name!r} in the inventory", param="name")
    secret = await unseal(data_dir, row["secret"], purpose=HOST_SECRET)
    if row["auth"] == "key":
        return Credentials(private_key=secret)
    return Credentials(password=secret)


async def save_facts(store: StateStore, name: str, facts: dict[str, Any]) -> None:
    """Merge ``facts`` into the host's stored facts."""
    row = await store.fetchone("SELECT facts FROM hosts WHERE name=?", (name,))
    if row is None:
        raise NotFound(f"no host {name!r} in the inventory", param="name")
    merged = {**msgspec.json.decode(row["facts"]), **facts}
    await store.execute("UPDATE hosts SET facts=?, facts_at=?, updated_at=? WHERE name=?",
                        (msgspec.json.encode(merged).decode(), time.time(), time.time(), name))


async def set_labels(store: StateStore, name: str, labels: dict[str, str]) -> None:
    if await store.execute("UPDATE hosts SET labels=?, updated_at=? WHERE name=?",
                           (msgspec.json.encode(labels).decode(), time.time(), name)) == 0:
        raise NotFound(f"no host {name!r} in the inventory", param="name")


# --- known hosts ----------------------------------------------------------------------------


async def host_key(store: StateStore, name: str) -> HostKeyRecord:
    row = await store.fetchone("SELECT * FROM host_keys WHERE host=?", (name,))
    if row is None:
        return HostKeyRecord(public_key=None, fingerprint=None, offered_key=None,
                             offered_fingerprint=None)
    return HostKeyRecord(public_key=row["public_key"], fingerprint=row["fingerprint"],
                         offered_key=row["offered_key"],
                         offered_fingerprint=row["offered_fingerprint"])


async def record_offered_key(store: StateStore, name: str, public_key: str,
                             fingerprint: str) -> None:
    """Remember a key the host offered that is not (yet) the accepted one."""
    await store.execute(
        "INSERT INTO host_keys (host, offered_key, offered_fingerprint, offered_at)"
        " VALUES (?,?,?,?) ON CONFLICT(host) DO UPDATE SET offered_key=excluded.offered_key,"
        " offered_fingerprint=excluded.offered_fingerprint, offered_at=excluded.offered_at",
        (name, public_key, fingerprint, time.time()))


async def accept_host_key(store: StateStore, name: str, public_key: str,
                          fingerprint: str) -> None:
    """Trust ``public_key`` as the host's key from now on (replaces any earlier one)."""
    await get_host(store, name)
    await store.execute(
        "INSERT INTO host_keys (host, public_key, fingerprint, accepted_at) VALUES (?,?,?,?)"
        " ON CONFLICT(host) DO UPDATE SET public_key=excluded.public_key,"
        " fingerprint=excluded.fingerprint, accepted_at=excluded.accepted_at,"
        " offered_key=NULL, offered_fingerprint=NULL, offered_at=NULL",
        (name, public_key, fingerprint, time.time()))
