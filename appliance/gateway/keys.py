"""API keys: created once (secret shown once), stored as sha256, verified through a cache."""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import time

import msgspec

from appliance.identity import audit
from appliance.kernel.errors import BadRequest, NotFound, Unauthorized
from appliance.store.state import StateStore

KEY_PREFIX = "sk-fa-"
ROLES = ("inference", "admin")


class ApiKey(msgspec.Struct, kw_only=True):
    """An API key as stored (never the secret)."""

    id: str
    name: str
    project_id: str
    prefix: str
    role: str
    models: list[str]
    rpm: int | None
    tpm: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    allowed_ips: list[str] = []
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    created_by: str = ""  # "user:NAME", "cli", ...: usage is attributed to this user

    @property
    def active(self) -> bool:
        now = time.time()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    def allows_address(self, address: str | None) -> bool:
        """Whether a request from ``address`` may use this key (source-address allowlist)."""
        if not self.allowed_ips:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.allowed_ips)


class CreatedKey(msgspec.Struct):
    id: str
    key: str


def hash_secret(secret: str) -> str:
    # Keys carry 256 bits of randomness, so a plain sha256 is a sound verifier here.
    return hashlib.sha256(secret.encode()).hexdigest()


_COLUMNS = ("id, name, project_id, prefix, role, models, rpm, tpm, created_at, expires_at,"
            " revoked_at, allowed_ips, tokens_per_day, tokens_per_month, created_by")


def _from_row(row: object) -> ApiKey:
    values = dict(row)  # type: ignore[call-overload]
    values["models"] = msgspec.json.decode(values["models"])
    values["allowed_ips"] = msgspec.json.decode(values["allowed_ips"])
    return msgspec.convert(values, ApiKey)


def _check_networks(networks: list[str]) -> list[str]:
    out = []
    for net in networks:
        try:
            out.append(str(ipaddress.ip_network(net.strip(), strict=False)))
        except ValueError:
            raise BadRequest(f"{net!r} is not an IP address or network",
                             param="allowed_ips") from None
    return out


async def create_key(store: StateStore, *, name: str, project_id: str = "default",
                     models: list[str] | None = None, rpm: int | None = None,
                     tpm: int | None = None, role: str = "inference",
                     expires_at: float | None = None, allowed_ips: list[str] | None = None,
                     tokens_per_day: int | None = None, tokens_per_month: int | None = None,
                     actor: str = "system", source_address: str = "") -> CreatedKey:
    """Create a key and return its secret; the secret is not stored and cannot be shown again."""
    if not name.strip():
        raise BadRequest("a key needs a name", param="name")
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", param="role")
    for value, field in ((rpm, "rpm"), (tpm, "tpm"), (tokens_per_day, "tokens_per_day"),
                         (tokens_per_month, "tokens_per_month")):
        if value is not None and value <= 0:
            raise BadRequest(f"{field} must be a positive number", param=field)
    networks = _check_networks(allowed_ips or [])
    if await store.fetchone("SELECT 1 FROM projects WHERE id=?", (project_id,)) is None:
        raise NotFound(f"no project {project_id!r}", param="project_id",
                       code="project_not_found")
    key_id = "key_" + secrets.token_hex(6)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    async with store.transaction() as conn:
        await conn.execute(
            f"INSERT INTO api_keys ({_COLUMNS}, secret_hash)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (key_id, name.strip(), project_id, secret[:10], role,
             msgspec.json.encode(models or []).decode(), rpm, tpm, time.time(), expires_at,
             None, msgspec.json.encode(networks).decode(), tokens_per_day, tokens_per_month,
             actor, hash_secret(secret)))
        await audit.record_async(
            conn, actor=actor, action="key.create", target=key_id,
            detail={"name": name.strip(), "project": project_id, "role": role,
                    "models": models or [], "expires_at": expires_at},
            source_address=source_address, data_dir=store.data_dir)
    return CreatedKey(id=key_id, key=secret)


async def list_keys(store: StateStore, *, include_revoked: bool = False) -> list[ApiKey]:
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    rows = await store.fetchall(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at")
    return [_from_row(r) for r in rows]


async def get_key(store: StateStore, key_id: str) -> ApiKey:
    row = await store.fetchone(f"SELECT {_COLUMNS} FROM api_keys WHERE id=?", (key_id,))
    if row is None:
        raise NotFound(f"no API key {key_id!r}", param="id", code="key_not_found")
    return _from_row(row)


async def revoke_key(store: StateStore, key_id: str, *, actor: str = "system",
                     source_address: str = "") -> ApiKey:
    """Revoke a key; a running server stops accepting it within a second."""
    key = await get_key(store, key_id)
    if key.revoked_at is None:
        async with store.transaction() as conn:
            await conn.execute("UPDATE api_keys SET revoked_at=? WHERE id=?",
                               (time.time(), key_id))
            await audit.record_async(conn, actor=actor, action="key.revoke", target=key_id,
                                     detail={"project": key.project_id},
                                     source_address=source_address, data_dir=store.data_dir)
    return await get_key(store, key_id)


async def rotate_key(store: StateStore, key_id: str, *, actor: str = "system",
                     source_address: str = "") -> CreatedKey:
    """A new secret for an active key; the old secret stops working at once."""
    key = await get_key(store, key_id)
    if not key.active:
        raise BadRequest(f"API key {key_id} is revoked or expired", param="id")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    async with store.transaction() as conn:
        await conn.execute("UPDATE api_keys SET secret_hash=?, prefix=? WHERE id=?",
                           (hash_secret(secret), secret[:10], key_id))
        await audit.record_async(conn, actor=actor, action="key.rotate", target=key_id,
                                 detail={"project": key.project_id},
                                 source_address=source_address, data_dir=store.data_dir)
    return CreatedKey(id=key_id, key=secret)


class KeyVerifier:
    """Maps a presented secret to its key; results (hits and misses) are cached for ``ttl``.

    The cache is cleared whenever the state database changes, so revocations apply at once.
    """

    def __init__(self, store: StateStore, *, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self._store = store
        self._ttl = ttl
        self._max = max_entries
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    async def verify(self, authorization: str | None) -> ApiKey:
        """Check an ``Authorization`` header value; raise Unauthorized with OpenAI's wording."""
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).", code="missing_api_key")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise Unauthorized("Authorization header must be 'Bearer YOUR_KEY'.")
        digest = hash_secret(secret.strip())
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is None or hit[1] < now:
            row = await self._store.fetchone(
                f"SELECT {_COLUMNS} FROM api_keys WHERE secret_hash=?", (digest,))
            key = _from_row(row) if row is not None else None
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[digest] = (key, now + self._ttl)
        else:
            key = hit[0]
        if key is None:
            raise Unauthorized(f"Incorrect API key provided: {secret[:10]}****.")
        if not key.active:
            raise Unauthorized(f"API key {key.id} has been revoked or has expired.",
                               code="revoked_api_key")
        return key
