"""Same-origin doors for the browser: ``/ui/api/*`` → ``/api/*`` and ``/ui/v1/*`` → ``/v1/*``.

The console's scripts call the appliance's own control API and gateway through these, with
the signed-in operator's credentials added on the server (the browser never holds a bearer
token) and a CSRF check on every state-changing request. The call goes over loopback to the
socket the browser reached, so it passes the same authentication, validation, rate limits,
metering and audit as any other client. Request and response bodies are streamed both ways,
so a multi-gigabyte bundle upload (``POST /ui/api/bundles``) never sits in memory here.
"""

from __future__ import annotations

import time

import aiohttp
import msgspec
from aiohttp import web
from yarl import URL

from appliance.identity.http import SESSION_COOKIE as IDENTITY_COOKIE
from appliance.ui.auth import CSRF_HEADER, Operator, csrf_ok, current_operator
from appliance.ui.pages import CONSOLE, SECURITY_HEADERS

PASS_BACK = ("Content-Type", "Content-Disposition", "Retry-After", "Cache-Control",
             "X-Sim-Run-Id", "X-Request-Id")
_SAFE = ("GET", "HEAD")
PLAYGROUND_KEY_TTL_S = 8 * 3600


def json_error(status: int, code: str, message: str) -> web.Response:
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=SECURITY_HEADERS)


def loopback(request: web.Request, path: str) -> URL:
    """The URL of ``path`` on the socket this request arrived on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    host, port = (sockname[0], sockname[1]) if sockname else ("127.0.0.1", 8080)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return URL.build(scheme=request.scheme, host=host, port=port, path=path,
                     query_string=request.query_string)


async def operator_for_call(request: web.Request) -> Operator | web.Response:
    """The operator, or the JSON error to answer with (not signed in, bad CSRF token)."""
    state = request.app[CONSOLE]
    operator = await current_operator(request, state.services, state.csrf_secret)
    if operator is None:
        return json_error(401, "not_signed_in", "Your session has ended; sign in again.")
    if request.method not in _SAFE and not csrf_ok(request, operator):
        return json_error(403, "csrf_failed", "The page is out of date; reload it and retry.")
    return operator


def credentials(operator: Operator) -> dict[str, str]:
    """Headers that make a loopback call act as the operator."""
    if operator.via == "session":
        return {"Cookie": f"{IDENTITY_COOKIE}={operator.session}", CSRF_HEADER: operator.csrf}
    return {"Authorization": operator.bearer} if operator.bearer else {}


async def playground_key(request: web.Request, operator: Operator) -> str | web.Response:
    """A signed-in user's short-lived inference key for /v1 (the gateway takes keys only).

    Created through ``POST /api/keys`` as the user, so it is permission-checked and audited,
    and kept in memory only; it expires by itself.
    """
    state = request.app[CONSOLE]
    cached = state.playground_keys.get(operator.user_id)
    if cached is not None and cached[1] > time.time() + 60:
        return cached[0]
    body = {"name": f"console playground ({operator.name})", "role": "inference",
            "expires_in_s": PLAYGROUND_KEY_TTL_S}
    async with state.http().post(loopback(request, "/api/keys").with_query(None), json=body,
                                 headers=credentials(operator), ssl=False) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 201:
            message = (data or {}).get("error", {}).get("message", f"HTTP {resp.status}")
            return json_error(resp.status, "playground_key", f"cannot create a key for the "
                              f"playground: {message}")
    bearer = f"Bearer {data['key']}"
    state.playground_keys[operator.user_id] = (bearer, time.time() + PLAYGROUND_KEY_TTL_S)
    return bearer


async def forward(request: web.Request, path: str) -> web.StreamResponse:
    """Stream this request to ``path`` on this appliance and stream the answer back."""
    operator = await operator_for_call(request)
    if isinstance(operator, web.Response):
        return operator
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    if path.startswith("/v1/") and operator.via == "session":
        bearer = await playground_key(request, operator)
        if isinstance(bearer, web.Response):
            return bearer
        headers["Authorization"] = bearer
    else:
        headers.update(credentials(operator))
    # The body is streamed, never read here: a bundle upload is gigabytes, and the handler
    # upstream applies the server's body-size limit where it reads a body whole.
    body = request.content if request.body_exists else None
    if body is not None and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    session = request.app[CONSOLE].http()
    try:
        async with session.request(request.method, loopback(request, path), data=body,
                                   headers=headers, ssl=False) as upstream:
            if upstream.status == 401 and path.startswith("/v1/"):
                request.app[CONSOLE].playground_keys.pop(operator.user_id, None)
            response = web.StreamResponse(status=upstream.status, headers={
                **{k: v for k, v in upstream.headers.items() if k in PASS_BACK},
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientError as exc:
        return json_error(502, "upstream_failed", f"the appliance did not answer: {exc}")


async def api_door(request: web.Request) -> web.StreamResponse:
    """``/ui/api/{tail}``: the control API on the operator's behalf."""
    return await forward(request, "/api/" + request.match_info["tail"])


async def v1_door(request: web.Request) -> web.StreamResponse:
    """``/ui/v1/{tail}``: the OpenAI-compatible API on the operator's behalf (playground)."""
    return await forward(request, "/v1/" + request.match_info["tail"])
