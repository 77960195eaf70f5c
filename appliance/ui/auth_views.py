"""Sign-in and sign-out pages."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from appliance.identity.http import IDENTITY
from appliance.ui.auth import check_sign_in, clear_session, csrf_ok, current_operator, set_session
from appliance.ui.pages import CONSOLE, base_context, render
from appliance.ui.proxy import credentials, loopback

log = logging.getLogger(__name__)


def _next(value: str) -> str:
    # only local paths: never redirect the browser to another site after sign-in
    return value if value.startswith("/") and not value.startswith("//") else "/"


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    """The sign-in form (skipped when someone is already signed in)."""
    state = request.app[CONSOLE]
    operator = await current_operator(request, state.services, state.csrf_secret)
    target = _next(request.query.get("next", "/"))
    if operator is not None:
        raise web.HTTPSeeOther(target)
    context = base_context(request, state, None)
    context.update(title="Sign in", next=target, error="", signed_out="bye" in request.query,
                   key_open=False, **providers(request))
    return render(state, "sign_in.html", context)


def providers(request: web.Request) -> dict[str, Any]:
    """Which sign-in methods the identity component offers here."""
    identity = request.app.get(IDENTITY)
    return {"ldap": bool(identity and identity.ldap),
            "oidc_url": "/api/auth/oidc/login" if identity and identity.oidc else ""}


async def sign_in(request: web.Request) -> web.StreamResponse:
    """Check the API key; on success set the session cookie and go where the user was going."""
    state = request.app[CONSOLE]
    form = await request.post()
    api_key = str(form.get("api_key", ""))
    target = _next(str(form.get("next", "/")))
    error = await check_sign_in(state.services, api_key)
    if error:
        context = base_context(request, state, None)
        context.update(title="Sign in", next=target, error=error, signed_out=False,
                       key_open=True, **providers(request))
        # 200, not 401: the form is shown again with the reason next to the field
        return render(state, "sign_in.html", context)
    response = web.HTTPSeeOther(target)
    set_session(response, request, api_key.strip())
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the browser session."""
    state = request.app[CONSOLE]
    operator = await current_operator(request, state.services, state.csrf_secret)
    form = await request.post()
    if operator is not None and not csrf_ok(request, operator, str(form.get("csrf_token", ""))):
        raise web.HTTPForbidden(text="stale page: reload and sign out again")
    if operator is not None and operator.via == "session":
        # end the session on the server too, not only in this browser
        async with state.http().post(loopback(request, "/api/auth/logout").with_query(None),
                                     headers=credentials(operator), ssl=False) as resp:
            if resp.status >= 400:
                log.warning("sign-out: /api/auth/logout answered %d", resp.status)
    response = web.HTTPSeeOther("/sign-in?bye=1")
    clear_session(response)
    raise response
