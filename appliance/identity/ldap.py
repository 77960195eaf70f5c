"""Sign-in against LDAP / Active Directory: search the user, bind as them, map groups to a role.

Uses ``ldap3`` (pure Python, blocking) in a worker thread. The user name is checked against
``USERNAME_RE`` and then escaped for the filter, so it cannot change the filter's meaning; an
empty password is refused before any bind (an empty-password bind is an anonymous bind that
many servers accept).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import struct
from collections.abc import Iterable

import msgspec

from appliance.identity.rbac import GLOBAL_ROLES
from appliance.identity.sessions import NewSession, SessionManager
from appliance.identity.users import USERNAME_RE, upsert_external_user
from appliance.kernel.errors import ConfigError, Unauthorized
from appliance.settings import LdapSettings
from appliance.store.state import StateStore

log = logging.getLogger(__name__)
# Most privileged first: a member of several mapped groups gets the strongest role.
ROLE_ORDER = ("admin", "operator", "developer", "viewer")


class DirectoryUser(msgspec.Struct, kw_only=True):
    username: str
    dn: str
    display_name: str
    email: str
    groups: list[str]


class DirectoryError(Exception):
    """Sign-in refused by the directory (reason for the audit trail, not for the caller)."""


def role_for_groups(groups: Iterable[str], role_map: dict[str, str],
                    default_role: str) -> str | None:
    """The strongest role any group maps to, else the default role (None: refuse)."""
    lowered = {g.lower() for g in groups}
    granted = {role for group, role in role_map.items() if group.lower() in lowered}
    for role in ROLE_ORDER:
        if role in granted:
            return role
    return default_role or None


class LdapAuthenticator:
    """Search + bind against the configured directory."""

    def __init__(self, settings: LdapSettings, store: StateStore) -> None:
        if not settings.url or not settings.user_base:
            raise ConfigError("identity.ldap needs url and user_base")
        for role in [*settings.role_map.values(), settings.default_role]:
            if role and role not in GLOBAL_ROLES:
                raise ConfigError(f"identity.ldap: unknown role {role!r}")
        self.settings = settings
        self.store = store

    def _server(self) -> object:
        import ldap3

        tls = None
        if self.settings.url.startswith("ldaps://") or self.settings.start_tls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED,
                            ca_certs_file=self.settings.ca_file or None,
                            version=ssl.PROTOCOL_TLS_CLIENT)
        return ldap3.Server(self.settings.url, connect_timeout=self.settings.timeout_s,
                            tls=tls, get_info=ldap3.NONE)

    def _connection(self, server: object, user: str | None, password: str | None) -> object:
        import ldap3

        conn = ldap3.Connection(server, user=user, password=password, read_only=True,
                                receive_timeout=max(1, math.ceil(self.settings.timeout_s)),
                                raise_exceptions=False)
        if self.settings.start_tls and not self.settings.url.startswith("ldaps://"):
            conn.open()
            conn.start_tls()
        return conn

    def authenticate(self, username: str, password: str) -> DirectoryUser:
        """Blocking: find the user, bind as them, read their groups; raise DirectoryError."""
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        if not USERNAME_RE.match(username):
            raise DirectoryError("user name has characters a user name may not have")
        if not password:
            raise DirectoryError("empty password")
        s = self.settings
        try:
            server = self._server()
            bind_password = os.environ.get(s.bind_password_env, "") if s.bind_password_env \
                else None
            service = self._connection(server, s.bind_dn or None, bind_password)
            if not service.bind():  # type: ignore[attr-defined]
                raise DirectoryError("service account bind failed")
            try:
                service.search(  # type: ignore[attr-defined]
                    s.user_base, s.user_filter.format(username=escape_filter_chars(username)),
                    attributes=["cn", "displayName", "mail"], size_limit=2)
                entries = list(service.entries)  # type: ignore[attr-defined]
                if len(entries) != 1:
                    raise DirectoryError(f"{len(entries)} directory entries match")
                entry = entries[0]
                dn = entry.entry_dn
                user_conn = self._connection(server, dn, password)
                if not user_conn.bind():  # type: ignore[attr-defined]
                    raise DirectoryError("wrong password")
                user_conn.unbind()  # type: ignore[attr-defined]
                groups: list[str] = []
                if s.group_base:
                    service.search(  # type: ignore[attr-defined]
                        s.group_base, s.group_filter.format(dn=escape_filter_chars(dn)),
                        attributes=[s.group_name_attribute])
                    for group in service.entries:  # type: ignore[attr-defined]
                        values = group[s.group_name_attribute].values
                        groups.extend(str(v) for v in values)
            finally:
                service.unbind()  # type: ignore[attr-defined]
        except DirectoryError:
            raise
        except (LDAPException, OSError, ValueError, struct.error) as exc:
            # fail closed on anything the directory or the client library throws
            log.warning("LDAP sign-in for %r failed: %s", username, exc)
            raise DirectoryError(f"directory error: {exc}") from None

        def first(attr: str) -> str:
            try:
                values = entry[attr].values
            except (KeyError, IndexError, LDAPException):
                return ""
            return str(values[0]) if values else ""
        return DirectoryUser(username=username, dn=dn, display_name=first("displayName") or
                             first("cn"), email=first("mail"), groups=groups)

    async def login(self, sessions: SessionManager, username: str, password: str, *,
                    source_address: str, user_agent: str = "") -> NewSession:
        """Sign a directory user in: authenticate, map the role, open a session."""
        await sessions.throttle.check(source_address)
        try:
            found = await asyncio.to_thread(self.authenticate, username, password)
        except DirectoryError as exc:
            raise await sessions.record_failure(username, source_address,
                                                f"ldap: {exc}") from None
        role = role_for_groups(found.groups, self.settings.role_map, self.settings.default_role)
        if role is None:
            raise await sessions.record_failure(username, source_address,
                                                "ldap: in no group that maps to a role")
        user = await upsert_external_user(self.store, username=username, source="ldap",
                                          role=role, display_name=found.display_name,
                                          email=found.email, source_address=source_address)
        if user.disabled:
            raise Unauthorized("the account is disabled", code="invalid_credentials")
        return await sessions.open_session(user, source_address=source_address,
                                           user_agent=user_agent, method="ldap")
