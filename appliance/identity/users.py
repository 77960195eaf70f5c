"""User accounts: local (scrypt password) or from the directory (LDAP, OIDC), with a role."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
import time
from typing import Any

import msgspec

from appliance.identity import audit
from appliance.identity.passwords import (
    check_password_policy,
    generate_password,
    hash_password,
)
from appliance.identity.rbac import GLOBAL_ROLES
from appliance.kernel.errors import BadRequest, Conflict, NotFound
from appliance.store.state import StateStore

log = logging.getLogger(__name__)
# Letters, digits and . _ - @ only: no quotes, wildcards, parentheses or backslashes, so a user
# name can never change the meaning of an SQL, LDAP filter or DN it is put into.
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SOURCES = ("local", "ldap", "oidc")


class User(msgspec.Struct, kw_only=True):
    """A user account as the API shows it (never the password hash)."""

    id: str
    username: str
    display_name: str
    email: str
    source: str
    role: str
    disabled: bool
    must_change_password: bool
    created_at: float
    last_login_at: float | None
    locked_until: float | None = None


_COLUMNS = ("id, username, display_name, email, source, role, disabled, must_change_password,"
            " created_at, last_login_at, locked_until")


def _user(row: Any) -> User:
    values = dict(row)
    values["disabled"] = bool(values["disabled"])
    values["must_change_password"] = bool(values["must_change_password"])
    return msgspec.convert(values, User)


def check_username(username: str) -> str:
    """The user name, or BadRequest when it has characters a user name may not have."""
    if not USERNAME_RE.match(username):
        raise BadRequest("a user name has 1-64 letters, digits, '.', '_', '-' or '@' and "
                         "starts with a letter or digit", param="username")
    return username


def check_role(role: str) -> str:
    if role not in GLOBAL_ROLES:
        raise BadRequest(f"role must be one of {', '.join(GLOBAL_ROLES)}", param="role")
    return role


async def get_user(store: StateStore, user_id: str) -> User:
    row = await store.fetchone(f"SELECT {_COLUMNS} FROM users WHERE id=?", (user_id,))
    if row is None:
        raise NotFound(f"no user {user_id!r}", param="id", code="user_not_found")
    return _user(row)


async def find_user(store: StateStore, username: str) -> User | None:
    row = await store.fetchone(f"SELECT {_COLUMNS} FROM users WHERE username=?", (username,))
    return _user(row) if row is not None else None


async def resolve_user(store: StateStore, ref: str) -> User:
    """A user by id (usr_...) or user name."""
    row = await store.fetchone(f"SELECT {_COLUMNS} FROM users WHERE id=? OR username=?",
                               (ref, ref))
    if row is None:
        raise NotFound(f"no user {ref!r}", param="user", code="user_not_found")
    return _user(row)


async def password_hash_of(store: StateStore, user_id: str) -> str:
    row = await store.fetchone("SELECT password_hash FROM users WHERE id=?", (user_id,))
    return str(row[0]) if row else ""


async def list_users(store: StateStore) -> list[User]:
    return [_user(r) for r in await store.fetchall(
        f"SELECT {_COLUMNS} FROM users ORDER BY username")]


async def create_user(store: StateStore, *, username: str, role: str, actor: str,
                      password: str | None = None, source: str = "local",
                      display_name: str = "", email: str = "",
                      must_change_password: bool = False, source_address: str = "") -> User:
    """Create an account; a local account needs a password that meets the policy."""
    check_username(username)
    check_role(role)
    if source not in SOURCES:
        raise BadRequest(f"source must be one of {', '.join(SOURCES)}", param="source")
    encoded = ""
    if source == "local":
        if password is None:
            raise BadRequest("a local account needs a password", param="password")
        reason = check_password_policy(password)
        if reason:
            raise BadRequest(reason, param="password")
        encoded = await asyncio.to_thread(hash_password, password)
    user_id = "usr_" + secrets.token_hex(6)
    now = time.time()
    try:
        async with store.transaction() as conn:
            await conn.execute(
                "INSERT INTO users (id, username, display_name, email, source, role,"
                " password_hash, must_change_password, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (user_id, username, display_name, email, source, role, encoded,
                 int(must_change_password), now, now))
            await audit.record_async(conn, actor=actor, action="user.create", target=username,
                                     detail={"role": role, "source": source},
                                     source_address=source_address, data_dir=store.data_dir)
    except sqlite3.IntegrityError:
        raise Conflict(f"user {username!r} exists", param="username",
                       code="user_exists") from None
    return await get_user(store, user_id)


async def update_user(store: StateStore, user: User, *, actor: str, role: str | None = None,
                      disabled: bool | None = None, display_name: str | None = None,
                      email: str | None = None, source_address: str = "") -> User:
    """Change role, disabled flag or profile; disabling ends the user's sessions."""
    changes: dict[str, Any] = {}
    if role is not None:
        changes["role"] = check_role(role)
    if disabled is not None:
        changes["disabled"] = int(disabled)
    if display_name is not None:
        changes["display_name"] = display_name
    if email is not None:
        changes["email"] = email
    if not changes:
        return user
    sets = ", ".join(f"{k}=?" for k in changes)
    async with store.transaction() as conn:
        await conn.execute(f"UPDATE users SET {sets}, updated_at=? WHERE id=?",
                           (*changes.values(), time.time(), user.id))
        if disabled:
            await conn.execute("DELETE FROM sessions WHERE user_id=?", (user.id,))
        await audit.record_async(conn, actor=actor, action="user.update", target=user.username,
                                 detail=changes, source_address=source_address,
                                 data_dir=store.data_dir)
    return await get_user(store, user.id)


async def set_password(store: StateStore, user: User, password: str, *, actor: str,
                       must_change: bool, action: str = "user.password_change",
                       source_address: str = "", keep_session: str | None = None) -> None:
    """Store a new password, unlock the account and end its other sessions."""
    if user.source != "local":
        raise BadRequest(f"{user.username} signs in through {user.source}; its password is "
                         "managed there", param="username")
    reason = check_password_policy(password)
    if reason:
        raise BadRequest(reason, param="password")
    encoded = await asyncio.to_thread(hash_password, password)
    async with store.transaction() as conn:
        await conn.execute(
            "UPDATE users SET password_hash=?, must_change_password=?, failed_logins=0,"
            " locked_until=NULL, updated_at=? WHERE id=?",
            (encoded, int(must_change), time.time(), user.id))
        await conn.execute("DELETE FROM sessions WHERE user_id=? AND token_hash != ?",
                           (user.id, keep_session or ""))
        await audit.record_async(conn, actor=actor, action=action, target=user.username,
                                 source_address=source_address, data_dir=store.data_dir)


async def reset_password(store: StateStore, user: User, *, actor: str,
                         password: str | None = None, source_address: str = "") -> str:
    """Admin reset: a new (given or random) password the user must change at next sign-in."""
    new = password or generate_password()
    await set_password(store, user, new, actor=actor, must_change=True,
                       action="user.password_reset", source_address=source_address)
    return new


async def upsert_external_user(store: StateStore, *, username: str, source: str, role: str,
                               display_name: str, email: str, source_address: str) -> User:
    """Create or refresh an LDAP/OIDC account at sign-in (role follows the directory)."""
    check_username(username)
    existing = await find_user(store, username)
    if existing is None:
        return await create_user(store, username=username, role=role, source=source,
                                 display_name=display_name, email=email,
                                 actor=f"{source}:{username}", source_address=source_address)
    if existing.source != source:
        raise Conflict(f"user {username!r} exists as a {existing.source} account",
                       code="user_source_mismatch")
    if (existing.role, existing.display_name, existing.email) != (role, display_name, email):
        return await update_user(store, existing, actor=f"{source}:{username}", role=role,
                                 display_name=display_name, email=email,
                                 source_address=source_address)
    return existing


async def ensure_admin(store: StateStore, *, username: str, password: str | None) -> str | None:
    """First start: create the admin account when there are no users at all.

    Returns the one-time password when one was generated (the caller prints it), else None.
    """
    row = await store.fetchone("SELECT COUNT(*) FROM users")
    if row is not None and row[0] > 0:
        return None
    generated = None if password else generate_password()
    await create_user(store, username=username, role="admin", actor="system",
                      password=password or generated, display_name="Administrator",
                      must_change_password=password is None)
    return generated
