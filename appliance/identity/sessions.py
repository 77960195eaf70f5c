"""Sign-in sessions: opaque tokens stored as sha256, idle and absolute expiry, throttling.

The browser holds the token in an HttpOnly cookie; the state stores only its hash, so a copy
of the database cannot be replayed as a cookie. Each session carries a CSRF token that
cookie-authenticated state-changing requests must echo in a header.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiosqlite
import msgspec

from appliance.identity import audit
from appliance.identity.passwords import dummy_hash, verify_password
from appliance.identity.users import User, find_user, get_user, password_hash_of
from appliance.kernel.errors import RateLimited, Unauthorized
from appliance.settings import IdentitySettings
from appliance.store.state import StateStore

log = logging.getLogger(__name__)
# Touching last_seen_at on every request would be a write per request; once a minute is
# enough precision for an idle timeout measured in minutes.
TOUCH_EVERY_S = 60.0


class Session(msgspec.Struct, kw_only=True):
    token_hash: str
    user_id: str
    csrf_token: str
    created_at: float
    last_seen_at: float
    expires_at: float
    source_address: str


class NewSession(msgspec.Struct, kw_only=True):
    """What a successful sign-in hands back: the cookie value (once) and the session."""

    token: str
    session: Session
    user: User


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AddressThrottle:
    """Failed sign-ins per source address in a sliding window, kept in ``login_failures`` so a
    restart or a second process on the same data directory sees them too.

    A failure costs one insert inside the transaction that audits it; a success deletes the
    address's rows inside the transaction that opens the session; checking is one read.
    """

    def __init__(self, store: StateStore, *, limit: int, window_s: float,
                 now: Callable[[], float]) -> None:
        self._store = store
        self._limit = limit
        self._window = window_s
        self._now = now

    async def check(self, address: str) -> None:
        """Raise RateLimited while the address has too many recent failures."""
        now = self._now()
        row = await self._store.fetchone(
            "SELECT count(*), min(failed_at) FROM login_failures"
            " WHERE address=? AND failed_at >= ?", (address, now - self._window))
        count, oldest = (row[0], row[1]) if row is not None else (0, None)
        if count >= self._limit:
            wait = (oldest if oldest is not None else now) + self._window - now
            raise RateLimited(f"too many failed sign-ins from {address}; try again in "
                              f"{wait:.0f} s", retry_after=wait, code="too_many_sign_ins")

    async def failed(self, conn: aiosqlite.Connection, address: str) -> None:
        """Record a failure inside the caller's transaction; expire rows past the window."""
        now = self._now()
        await conn.execute("DELETE FROM login_failures WHERE failed_at < ?",
                           (now - self._window,))
        await conn.execute("INSERT INTO login_failures (address, failed_at) VALUES (?, ?)",
                           (address, now))

    async def succeeded(self, conn: aiosqlite.Connection, address: str) -> None:
        """Forget the address's failures, inside the caller's transaction."""
        await conn.execute("DELETE FROM login_failures WHERE address=?", (address,))


class SessionManager:
    """Signs users in and out and resolves session cookies."""

    def __init__(self, store: StateStore, settings: IdentitySettings, *,
                 now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.now = now
        self.throttle = AddressThrottle(store, limit=settings.address_failures,
                                        window_s=settings.address_window_s, now=now)

    async def record_failure(self, username: str, address: str, reason: str,
                    user: User | None = None) -> Unauthorized:
        now = self.now()
        async with self.store.transaction() as conn:
            await self.throttle.failed(conn, address)
            if user is not None:
                await conn.execute(
                    "UPDATE users SET failed_logins = failed_logins + 1,"
                    " locked_until = CASE WHEN failed_logins + 1 >= ? THEN ? ELSE locked_until"
                    " END WHERE id=?",
                    (self.settings.lockout_failures, now + self.settings.lockout_s, user.id))
            await audit.record_async(conn, actor=f"user:{username[:64]}", action="auth.login",
                                     target=username[:64], outcome="failure",
                                     detail={"reason": reason}, source_address=address,
                                     data_dir=self.store.data_dir)
        log.info("sign-in failed for %r from %s: %s", username[:64], address, reason)
        # one message for every reason: a caller cannot tell names from passwords
        return Unauthorized("wrong user name or password, or the account is locked or "
                            "disabled", code="invalid_credentials")

    async def login_password(self, username: str, password: str, *,
                             source_address: str, user_agent: str = "") -> NewSession:
        """Check a local account's password and open a session."""
        await self.throttle.check(source_address)
        user = await find_user(self.store, username) if len(username) <= 64 else None
        encoded = await password_hash_of(self.store, user.id) if user else ""
        ok = await asyncio.to_thread(verify_password, password, encoded or dummy_hash())
        if user is None:
            raise await self.record_failure(username, source_address, "no such user")
        if user.source != "local" or not encoded:
            raise await self.record_failure(username, source_address, f"{user.source} account",
                                            user)
        if user.disabled:
            raise await self.record_failure(username, source_address, "account disabled", user)
        if user.locked_until is not None and user.locked_until > self.now():
            raise await self.record_failure(username, source_address, "account locked", user)
        if not ok:
            raise await self.record_failure(username, source_address, "wrong password", user)
        return await self.open_session(user, source_address=source_address,
                                       user_agent=user_agent, method="password")

    async def open_session(self, user: User, *, source_address: str, user_agent: str = "",
                           method: str) -> NewSession:
        """Open a session for an authenticated user (any sign-in method) and audit it."""
        if user.disabled:
            raise Unauthorized("the account is disabled", code="invalid_credentials")
        token = secrets.token_urlsafe(32)
        now = self.now()
        session = Session(token_hash=token_hash(token), user_id=user.id,
                          csrf_token=secrets.token_urlsafe(32), created_at=now,
                          last_seen_at=now, expires_at=now + self.settings.session_absolute_s,
                          source_address=source_address)
        async with self.store.transaction() as conn:
            await self.throttle.succeeded(conn, source_address)
            await conn.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at,"
                " last_seen_at, expires_at, source_address, user_agent)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (session.token_hash, user.id, session.csrf_token, now, now, session.expires_at,
                 source_address, user_agent[:256]))
            await conn.execute("UPDATE users SET failed_logins=0, locked_until=NULL,"
                               " last_login_at=? WHERE id=?", (now, user.id))
            await conn.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            await audit.record_async(conn, actor=f"user:{user.username}", action="auth.login",
                                     target=user.username, detail={"method": method},
                                     source_address=source_address,
                                     data_dir=self.store.data_dir)
        return NewSession(token=token, session=session,
                          user=await get_user(self.store, user.id))

    async def resolve(self, token: str) -> tuple[Session, User] | None:
        """The live session and its user for a cookie value, or None (expired, unknown)."""
        if not token or len(token) > 128:
            return None
        row = await self.store.fetchone(
            "SELECT token_hash, user_id, csrf_token, created_at, last_seen_at, expires_at,"
            " source_address FROM sessions WHERE token_hash=?", (token_hash(token),))
        if row is None:
            return None
        session = msgspec.convert(dict(row), Session)
        now = self.now()
        if session.expires_at <= now or \
                session.last_seen_at + self.settings.session_idle_s <= now:
            await self.store.execute("DELETE FROM sessions WHERE token_hash=?",
                                     (session.token_hash,))
            return None
        user = await get_user(self.store, session.user_id)
        if user.disabled:
            return None
        if now - session.last_seen_at > TOUCH_EVERY_S:
            await self.store.execute("UPDATE sessions SET last_seen_at=? WHERE token_hash=?",
                                     (now, session.token_hash))
        return session, user

    async def logout(self, session: Session, user: User, *, source_address: str) -> None:
        async with self.store.transaction() as conn:
            await conn.execute("DELETE FROM sessions WHERE token_hash=?", (session.token_hash,))
            await audit.record_async(conn, actor=f"user:{user.username}", action="auth.logout",
                                     target=user.username, source_address=source_address,
                                     data_dir=self.store.data_dir)


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Constant-time check of the CSRF header against the session's token."""
    return bool(presented) and hmac.compare_digest(session.csrf_token.encode(),
                                                   (presented or "").encode())


def session_info(new: NewSession | tuple[Session, User]) -> dict[str, Any]:
    """The JSON body of login and /me: the user and the CSRF token pages must send back."""
    session, user = (new.session, new.user) if isinstance(new, NewSession) else new
    return {"user": msgspec.to_builtins(user), "csrf_token": session.csrf_token,
            "expires_at": session.expires_at,
            "must_change_password": user.must_change_password}
