"""Who is using the console: sign-in, the session cookie and CSRF protection.

People sign in with a user account of the identity component (``docs/identity.md``): its
session cookie and CSRF token then authorize the console's pages and the browser's calls to
``/api``. Scripts' admin API keys work as a second way in: the key's secret is kept in an
HttpOnly, SameSite=Strict cookie and verified (through the gateway's cached verifier) on every
request, so revoking the key signs the browser out at once.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from appliance.identity.http import CSRF_COOKIE as IDENTITY_CSRF_COOKIE
from appliance.identity.http import SESSION_COOKIE as IDENTITY_COOKIE
from appliance.identity.http import csrf_token as session_csrf
from appliance.identity.http import current_user
from appliance.kernel.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.app import Services

SESSION_COOKIE = "fa_console"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_MAX_AGE_S = 12 * 3600


class Operator(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in person (or the anonymous operator when auth is off)."""

    name: str
    role: str
    key_id: str
    bearer: str  # the Authorization header value for calls made on their behalf ("" = none)
    csrf: str
    via: str  # "session" (a user), "api-key" or "open" (auth off)
    user_id: str = ""
    session: str = ""  # the identity session cookie, forwarded on the user's behalf

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """The name the audit trail knows this operator by (as the control API's principal)."""
        if self.via == "session":
            return f"user:{self.name}"
        return f"key:{self.key_id}" if self.via == "api-key" else "anonymous"


def csrf_token(session_value: str, secret: bytes) -> str:
    """The CSRF token bound to one session value; an attacker cannot read the cookie."""
    return hmac.new(secret, session_value.encode(), hashlib.sha256).hexdigest()[:32]


async def current_operator(request: web.Request, services: Services,
                           secret: bytes) -> Operator | None:
    """The operator of this request, or None when nobody (valid) is signed in."""
    user = await current_user(request)
    if user is not None and not user.disabled:
        return Operator(name=user.username, role=user.role, key_id="", bearer="",
                        csrf=session_csrf(request), via="session", user_id=user.id,
                        session=request.cookies.get(IDENTITY_COOKIE, ""))
    if not services.settings.auth.required:
        return Operator(name="operator", role="admin", key_id="anonymous", bearer="",
                        csrf=csrf_token("open", secret), via="open")
    value = request.cookies.get(SESSION_COOKIE, "")
    if not value:
        return None
    try:
        key = await services.verifier.verify(f"Bearer {value}")
    except ApplianceError:
        return None
    if key.role != "admin":
        return None
    return Operator(name=key.name, role=key.role, key_id=key.id, bearer=f"Bearer {value}",
                    csrf=csrf_token(value, secret), via="api-key")


async def check_sign_in(services: Services, api_key: str) -> str:
    """Verify an API key typed on the sign-in page; the error message to show, or ''."""
    api_key = api_key.strip()
    if not api_key:
        return "Enter an API key."
    try:
        key = await services.verifier.verify(f"Bearer {api_key}")
    except ApplianceError as exc:
        return exc.message
    if key.role != "admin":
        return ("This key has the inference role; the console needs a key created with "
                "--admin (appliance keys create --name NAME --admin).")
    return ""


def set_session(response: web.StreamResponse, request: web.Request, value: str) -> None:
    response.set_cookie(SESSION_COOKIE, value, max_age=SESSION_MAX_AGE_S, path="/",
                        httponly=True, samesite="Strict", secure=request.secure)


def clear_session(response: web.StreamResponse) -> None:
    """Forget every way this browser was signed in."""
    for name in (SESSION_COOKIE, IDENTITY_COOKIE, IDENTITY_CSRF_COOKIE):
        response.del_cookie(name, path="/")


def csrf_ok(request: web.Request, operator: Operator, form_value: str = "") -> bool:
    """A state-changing request must carry the session's CSRF token (header or form field)."""
    presented = request.headers.get(CSRF_HEADER, "") or form_value
    return bool(presented) and hmac.compare_digest(presented, operator.csrf)
