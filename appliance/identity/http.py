"""HTTP surface of identity: who is calling, may they, and /api/auth, users, projects, audit.

How a browser page authenticates (the UI builds on exactly this):

1. ``POST /api/auth/login`` with JSON ``{"username", "password"}`` (``Content-Type:
   application/json``; forms are refused so a foreign page cannot sign a browser in). The
   answer sets the ``fa_session`` cookie (HttpOnly, SameSite=Strict, Path=/, Secure under TLS)
   and a readable ``fa_csrf`` cookie, and returns ``{"user", "csrf_token", "expires_at",
   "must_change_password"}``.
2. Every state-changing request (POST, PUT, PATCH, DELETE) made with the cookie carries the
   token in the ``X-CSRF-Token`` header (or, for a server-rendered form, a ``csrf_token`` form
   field checked by ``require``). Requests with ``Authorization: Bearer`` need no CSRF token.
3. ``GET /api/auth/me`` returns the same body while the session lives (401 after);
   ``POST /api/auth/logout`` ends it.

Server-rendered views use ``await current_user(request)`` and the ``require(permission)``
decorator from this module.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

from appliance.gateway.keys import KeyVerifier
from appliance.identity import audit, projects, rbac, users
from appliance.identity.rbac import ANONYMOUS, SYSTEM, Principal
from appliance.identity.sessions import (
    Session,
    SessionManager,
    csrf_matches,
    session_info,
)
from appliance.identity.users import User
from appliance.kernel.errors import (
    ApplianceError,
    BadRequest,
    Forbidden,
    NotFound,
    Unauthorized,
)
from appliance.settings import Settings
from appliance.store.state import StateStore

log = logging.getLogger(__name__)
SESSION_COOKIE = "fa_session"
CSRF_COOKIE = "fa_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes a user whose password must change may still call.
_PASSWORD_CHANGE_ALLOWED = {"/api/auth/me", "/api/auth/password", "/api/auth/logout"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_encode = msgspec.json.Encoder().encode


class _Auth(msgspec.Struct, kw_only=True):
    """What the request resolved to; cached on the request."""

    principal: Principal
    session: Session | None = None
    user: User | None = None


AUTH = web.RequestKey("appliance.identity.auth", _Auth)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(data), content_type="application/json")


def source_address(request: web.Request) -> str:
    """The peer address (no proxy headers are trusted: the appliance is the edge)."""
    return request.remote or ""


class Identity:
    """Authenticates requests (session cookie or API key) and authorizes them by the table."""

    def __init__(self, store: StateStore, settings: Settings, verifier: KeyVerifier) -> None:
        self.store = store
        self.settings = settings
        self.verifier = verifier
        self.sessions = SessionManager(store, settings.identity)
        self.oidc: Any = None  # an OidcClient when [identity.oidc] is enabled
        self.ldap: Any = None  # an LdapAuthenticator when [identity.ldap] is enabled
        if settings.identity.oidc.enabled:
            from appliance.identity.oidc import OidcClient

            self.oidc = OidcClient(settings.identity.oidc, store)
        if settings.identity.ldap.enabled:
            from appliance.identity.ldap import LdapAuthenticator

            self.ldap = LdapAuthenticator(settings.identity.ldap, store)
        self.ca_pem: bytes | None = None  # the site CA certificate under --tls

    # --- authentication ------------------------------------------------------------------------

    async def _principal_of_user(self, user: User, session: Session | None) -> Principal:
        return Principal(kind="user", name=f"user:{user.username}", role=user.role,
                         projects=await projects.memberships(self.store, user.id),
                         user_id=user.id,
                         session_csrf=session.csrf_token if session else None)

    async def authenticate(self, request: web.Request) -> _Auth:
        """Resolve the caller once per request: bearer key first, then the session cookie."""
        cached: _Auth | None = request.get(AUTH)
        if cached is not None:
            return cached
        auth = _Auth(principal=ANONYMOUS)
        header = request.headers.get("Authorization")
        if header:
            key = await self.verifier.verify(header)
            role = "admin" if key.role == "admin" else None
            auth = _Auth(principal=Principal(kind="key", name=f"key:{key.id}", role=role,
                                             key_id=key.id))
        else:
            token = request.cookies.get(SESSION_COOKIE)
            found = await self.sessions.resolve(token) if token else None
            if found is not None:
                session, user = found
                auth = _Auth(principal=await self._principal_of_user(user, session),
                             session=session, user=user)
        request[AUTH] = auth
        return auth

    async def authorize(self, request: web.Request) -> None:
        """Control-API check: table entry, authentication, permission, CSRF. Raises."""
        route = request.match_info.route
        resource = route.resource
        if resource is None or request.match_info.http_exception is not None:
            return  # no such route: the router answers 404/405
        rule = rbac.rule_for(request.method, resource.canonical)
        if rule is None:
            raise Forbidden(f"{request.method} {resource.canonical} has no entry in the "
                            "permission table", code="route_not_permitted")
        if not self.settings.auth.required and not request.headers.get("Authorization") \
                and SESSION_COOKIE not in request.cookies:
            request[AUTH] = _Auth(principal=SYSTEM)
            return
        auth = await self.authenticate(request)
        principal = auth.principal
        if rule.permission == rbac.PUBLIC:
            return
        if principal.kind == "anonymous":
            raise Unauthorized("sign in or send an API key (Authorization: Bearer KEY)",
                               code="unauthenticated")
        if principal.kind == "key" and principal.role is None:
            raise Forbidden("this API key is for /v1 only; the control API needs a key with "
                            "the admin role or a signed-in user", code="forbidden")
        if not principal.allowed(rule):
            raise Forbidden(f"your role does not grant {rule.permission}",
                            code="permission_denied")
        if auth.session is not None and request.method not in SAFE_METHODS and \
                not csrf_matches(auth.session, request.headers.get(CSRF_HEADER)):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header", code="csrf_failed")
        if auth.user is not None and auth.user.must_change_password and \
                resource.canonical not in _PASSWORD_CHANGE_ALLOWED:
            raise Forbidden("change your password first (POST /api/auth/password)",
                            code="password_change_required")

    # --- cookies -------------------------------------------------------------------------------

    def _set_cookies(self, request: web.Request, response: web.StreamResponse, token: str,
                     csrf: str) -> None:
        secure = request.secure
        max_age = int(self.settings.identity.session_absolute_s)
        response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="Strict",
                            secure=secure, path="/", max_age=max_age)
        response.set_cookie(CSRF_COOKIE, csrf, httponly=False, samesite="Strict",
                            secure=secure, path="/", max_age=max_age)

    @staticmethod
    def _clear_cookies(response: web.StreamResponse) -> None:
        response.del_cookie(SESSION_COOKIE, path="/")
        response.del_cookie(CSRF_COOKIE, path="/")

    # --- routes --------------------------------------------------------------------------------

    def add_routes(self, app: web.Application,
                   add: Callable[[str, str, Handler], None]) -> None:
        """Register identity's /api routes through the control API's ``add`` (OpenAPI)."""
        views = IdentityViews(self)
        add("GET", "/api/auth/providers", views.providers)
        add("POST", "/api/auth/login", views.login)
        add("POST", "/api/auth/logout", views.logout)
        add("GET", "/api/auth/me", views.me)
        add("POST", "/api/auth/password", views.change_password)
        add("GET", "/api/auth/oidc/login", views.oidc_login)
        add("GET", "/api/auth/oidc/callback", views.oidc_callback)
        add("GET", "/api/users", views.list_users)
        add("POST", "/api/users", views.create_user)
        add("GET", "/api/users/{id}", views.get_user)
        add("PATCH", "/api/users/{id}", views.update_user)
        add("POST", "/api/users/{id}/reset-password", views.reset_password)
        add("GET", "/api/projects", views.list_projects)
        add("POST", "/api/projects", views.create_project)
        add("GET", "/api/projects/{id}", views.get_project)
        add("PATCH", "/api/projects/{id}", views.update_project)
        add("GET", "/api/projects/{id}/members", views.list_members)
        add("POST", "/api/projects/{id}/members", views.add_member)
        add("DELETE", "/api/projects/{id}/members/{user_id}", views.remove_member)
        add("GET", "/api/audit", views.list_audit)
        add("GET", "/api/audit/verify", views.verify_audit)
        add("GET", "/api/tls/ca.pem", views.ca_pem)


IDENTITY = web.AppKey("identity", Identity)


def principal_of(request: web.Request) -> Principal:
    """The caller of an /api request (set by the control-API middleware)."""
    auth = request.get(AUTH)
    return auth.principal if auth is not None else ANONYMOUS


# --- helpers for server-rendered views (the UI) ----------------------------------------------


async def current_user(request: web.Request) -> User | None:
    """The signed-in user of a request (session cookie), or None."""
    try:
        auth = await request.app[IDENTITY].authenticate(request)
    except ApplianceError:
        return None
    return auth.user


def require(permission: str, *, login_url: str | None = None
            ) -> Callable[[Handler], Handler]:
    """Decorate a UI view: the signed-in user must hold ``permission``.

    Anonymous callers get 401 (or a redirect to ``login_url``), others without the permission
    403. State-changing requests must carry the session's CSRF token in the ``X-CSRF-Token``
    header or a ``csrf_token`` form field. The user is available as ``current_user``.
    """
    def decorate(view: Handler) -> Handler:
        @functools.wraps(view)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            try:
                auth = await request.app[IDENTITY].authenticate(request)
            except ApplianceError:
                auth = _Auth(principal=ANONYMOUS)
            if auth.user is None:
                if login_url is not None:
                    raise web.HTTPFound(login_url)
                raise web.HTTPUnauthorized(text="sign in first")
            if not auth.principal.can(permission):
                raise web.HTTPForbidden(text=f"your role does not grant {permission}")
            if request.method not in SAFE_METHODS and auth.session is not None:
                presented = request.headers.get(CSRF_HEADER)
                if presented is None and request.content_type in (
                        "application/x-www-form-urlencoded", "multipart/form-data"):
                    form = await request.post()
                    value = form.get(CSRF_FORM_FIELD)
                    presented = value if isinstance(value, str) else None
                if not csrf_matches(auth.session, presented):
                    raise web.HTTPForbidden(text="missing or wrong CSRF token")
            return await view(request)
        return wrapper
    return decorate


def csrf_token(request: web.Request) -> str:
    """The CSRF token of the request's session (after ``current_user``), for forms."""
    auth = request.get(AUTH)
    return auth.session.csrf_token if auth is not None and auth.session is not None else ""


# --- views ------------------------------------------------------------------------------------


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


class PasswordBody(msgspec.Struct, forbid_unknown_fields=True):
    current_password: str
    new_password: str


class NewUser(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    username: str
    role: str = "viewer"
    password: str | None = None  # none: a one-time password is generated and returned
    display_name: str = ""
    email: str = ""


class UserChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: str | None = None
    disabled: bool | None = None
    display_name: str | None = None
    email: str | None = None


class ResetBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    password: str | None = None


class MemberBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    user: str  # id or user name
    role: str = "developer"


async def read_body(request: web.Request, kind: type[Any]) -> Any:
    """Decode a JSON body into ``kind`` or raise BadRequest naming the bad field."""
    try:
        return msgspec.json.decode(await request.read(), type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


class IdentityViews:
    def __init__(self, identity: Identity) -> None:
        self.i = identity
        self.store = identity.store

    # --- sign-in ---

    async def providers(self, request: web.Request) -> web.Response:
        """Which sign-in methods this site offers."""
        return _json({"password": True, "ldap": self.i.ldap is not None,
                      "oidc": self.i.oidc is not None,
                      "oidc_login_url": "/api/auth/oidc/login" if self.i.oidc else None})

    async def login(self, request: web.Request) -> web.Response:
        """Sign in with user name and password (local or LDAP); sets the session cookie."""
        if request.content_type != "application/json":
            raise BadRequest("send JSON (Content-Type: application/json)",
                             code="json_required")
        body: LoginBody = await read_body(request, LoginBody)
        address = source_address(request)
        agent = request.headers.get("User-Agent", "")
        existing = await users.find_user(self.store, body.username) \
            if users.USERNAME_RE.match(body.username) else None
        if self.i.ldap is not None and (existing is None or existing.source == "ldap"):
            new = await self.i.ldap.login(self.i.sessions, body.username, body.password,
                                          source_address=address, user_agent=agent)
        else:
            new = await self.i.sessions.login_password(body.username, body.password,
                                                       source_address=address,
                                                       user_agent=agent)
        response = _json(session_info(new))
        self.i._set_cookies(request, response, new.token, new.session.csrf_token)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        """End the current session and clear its cookies."""
        auth = await self.i.authenticate(request)
        if auth.session is not None and auth.user is not None:
            await self.i.sessions.logout(auth.session, auth.user,
                                         source_address=source_address(request))
        response = _json({"signed_out": True})
        self.i._clear_cookies(response)
        return response

    async def me(self, request: web.Request) -> web.Response:
        """The signed-in user, their projects and the session's CSRF token."""
        auth = await self.i.authenticate(request)
        p = auth.principal
        if auth.session is not None and auth.user is not None:
            body = session_info((auth.session, auth.user))
        else:
            body = {"user": None, "csrf_token": None, "key_id": p.key_id}
        body.update({"role": p.role, "projects": p.projects,
                     "permissions": sorted(x for x in rbac.ALL_PERMISSIONS if p.has(x))})
        return _json(body)

    async def change_password(self, request: web.Request) -> web.Response:
        """Change the signed-in user's own password (other sessions end)."""
        auth = await self.i.authenticate(request)
        if auth.user is None or auth.session is None:
            raise BadRequest("only a signed-in user can change their password",
                             code="not_a_user")
        body: PasswordBody = await read_body(request, PasswordBody)
        import asyncio

        from appliance.identity.passwords import verify_password

        encoded = await users.password_hash_of(self.store, auth.user.id)
        if not encoded or not await asyncio.to_thread(verify_password, body.current_password,
                                                      encoded):
            await audit.write(self.store, actor=auth.principal.name,
                              action="user.password_change", target=auth.user.username,
                              outcome="failure", detail={"reason": "wrong current password"},
                              source_address=source_address(request))
            raise Unauthorized("the current password is wrong", code="invalid_credentials")
        await users.set_password(self.store, auth.user, body.new_password,
                                 actor=auth.principal.name, must_change=False,
                                 source_address=source_address(request),
                                 keep_session=auth.session.token_hash)
        return _json({"changed": True})

    async def oidc_login(self, request: web.Request) -> web.StreamResponse:
        """Start OIDC sign-in: redirect to the identity provider (code flow + PKCE)."""
        if self.i.oidc is None:
            raise NotFound("OIDC sign-in is not configured", code="oidc_disabled")
        result: web.StreamResponse = await self.i.oidc.start(request)
        return result

    async def oidc_callback(self, request: web.Request) -> web.StreamResponse:
        """Finish OIDC sign-in: check state, code, ID token; set the session cookie."""
        if self.i.oidc is None:
            raise NotFound("OIDC sign-in is not configured", code="oidc_disabled")
        new = await self.i.oidc.finish(request, self.i.sessions)
        # A page, not a redirect: this request came from the IdP (cross-site), and a browser
        # would not send the new SameSite=Strict cookie on a redirect chained to it.
        target = self.i.oidc.after_login_path
        response = web.Response(
            text=f'<!doctype html><meta http-equiv="refresh" content="0;url={target}">'
                 f'<title>Signed in</title><a href="{target}">Continue</a>',
            content_type="text/html", headers={"Cache-Control": "no-store"})
        self.i._set_cookies(request, response, new.token, new.session.csrf_token)
        self.i.oidc.clear_flow_cookie(response)
        return response

    # --- users ---

    def _actor(self, request: web.Request) -> tuple[str, str]:
        return principal_of(request).name, source_address(request)

    async def list_users(self, request: web.Request) -> web.Response:
        """User accounts (no password hashes)."""
        return _json(await users.list_users(self.store))

    async def create_user(self, request: web.Request) -> web.Response:
        """Create a local account; without a password a one-time one is returned."""
        body: NewUser = await read_body(request, NewUser)
        actor, address = self._actor(request)
        from appliance.identity.passwords import generate_password

        password = body.password or generate_password()
        user = await users.create_user(self.store, username=body.username, role=body.role,
                                       password=password, display_name=body.display_name,
                                       email=body.email, actor=actor,
                                       must_change_password=body.password is None,
                                       source_address=address)
        out: dict[str, Any] = {"user": msgspec.to_builtins(user)}
        if body.password is None:
            out["one_time_password"] = password
        return _json(out, status=201)

    async def get_user(self, request: web.Request) -> web.Response:
        """One user account."""
        return _json(await users.get_user(self.store, request.match_info["id"]))

    async def update_user(self, request: web.Request) -> web.Response:
        """Change a user's role, disable or enable them (disabling ends their sessions)."""
        body: UserChange = await read_body(request, UserChange)
        user = await users.get_user(self.store, request.match_info["id"])
        actor, address = self._actor(request)
        return _json(await users.update_user(self.store, user, actor=actor, role=body.role,
                                             disabled=body.disabled,
                                             display_name=body.display_name,
                                             email=body.email, source_address=address))

    async def reset_password(self, request: web.Request) -> web.Response:
        """Admin reset: returns a one-time password the user must change at sign-in."""
        body: ResetBody = await read_body(request, ResetBody) if await request.read() \
            else ResetBody()
        user = await users.get_user(self.store, request.match_info["id"])
        actor, address = self._actor(request)
        new = await users.reset_password(self.store, user, actor=actor, password=body.password,
                                         source_address=address)
        return _json({"user": user.username,
                      "one_time_password": None if body.password else new})

    # --- projects ---

    async def _visible_project(self, request: web.Request, permission: str) -> str:
        project_id = request.match_info["id"]
        allowed = principal_of(request).project_ids(permission)
        if allowed is not None and project_id not in allowed:
            raise NotFound(f"no project {project_id!r}", param="project",
                           code="project_not_found")
        await projects.get_project(self.store, project_id)
        return project_id

    async def list_projects(self, request: web.Request) -> web.Response:
        """Projects the caller may see, with quotas and model allow-lists."""
        allowed = principal_of(request).project_ids("projects.read")
        return _json(await projects.list_projects(self.store, allowed))

    async def create_project(self, request: web.Request) -> web.Response:
        """Create a project."""
        body: projects.Project = await read_body(request, projects.Project)
        actor, address = self._actor(request)
        return _json(await projects.create_project(self.store, body, actor=actor,
                                                   source_address=address), status=201)

    async def get_project(self, request: web.Request) -> web.Response:
        """One project."""
        project_id = await self._visible_project(request, "projects.read")
        return _json(await projects.get_project(self.store, project_id))

    async def update_project(self, request: web.Request) -> web.Response:
        """Change a project's quotas, model allow-list, name or description."""
        body: projects.ProjectChange = await read_body(request, projects.ProjectChange)
        actor, address = self._actor(request)
        return _json(await projects.update_project(self.store, request.match_info["id"], body,
                                                   actor=actor, source_address=address))

    async def list_members(self, request: web.Request) -> web.Response:
        """Members of a project and their project roles."""
        project_id = await self._visible_project(request, "projects.read")
        return _json(await projects.list_members(self.store, project_id))

    async def add_member(self, request: web.Request) -> web.Response:
        """Add a user to a project (or change their project role)."""
        project_id = await self._visible_project(request, "projects.members")
        body: MemberBody = await read_body(request, MemberBody)
        user = await users.resolve_user(self.store, body.user)
        actor, address = self._actor(request)
        return _json(await projects.add_member(self.store, project_id, user, body.role,
                                               actor=actor, source_address=address),
                     status=201)

    async def remove_member(self, request: web.Request) -> web.Response:
        """Remove a user from a project."""
        project_id = await self._visible_project(request, "projects.members")
        actor, address = self._actor(request)
        await projects.remove_member(self.store, project_id, request.match_info["user_id"],
                                     actor=actor, source_address=address)
        return _json({"removed": request.match_info["user_id"]})

    # --- audit and TLS ---

    async def list_audit(self, request: web.Request) -> web.Response:
        """Audit entries, newest first; filter by actor, action (prefix), target, outcome,
        since/until (unix seconds), before_id, limit."""
        q = request.query
        try:
            entries = await audit.list_entries(
                self.store, actor=q.get("actor"), action=q.get("action"),
                target=q.get("target"), outcome=q.get("outcome"),
                since=float(q["since"]) if "since" in q else None,
                until=float(q["until"]) if "until" in q else None,
                before_id=int(q["before_id"]) if "before_id" in q else None,
                limit=int(q.get("limit", "100")))
        except ValueError:
            raise BadRequest("since, until, before_id and limit must be numbers") from None
        return _json(entries)

    async def verify_audit(self, request: web.Request) -> web.Response:
        """Check the audit hash chain and signed checkpoints; names the first broken entry."""
        result = await audit.verify(self.store)
        return _json(result, status=200)

    async def ca_pem(self, request: web.Request) -> web.Response:
        """The site CA certificate (PEM) for clients to trust, when serving with --tls."""
        if self.i.ca_pem is None:
            raise NotFound("this appliance serves without a site CA (start it with --tls)",
                           code="no_site_ca")
        return web.Response(body=self.i.ca_pem, content_type="application/x-pem-file",
                            headers={"Content-Disposition":
                                     'attachment; filename="appliance-ca.pem"'})
