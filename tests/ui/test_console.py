"""The console without a browser: sign-in, CSRF, the doors to /api, empty states."""

from __future__ import annotations

from typing import Any

from appliance.app import SERVICES
from appliance.gateway.keys import create_key
from appliance.ui.auth import CSRF_HEADER, SESSION_COOKIE
from tests.conftest import AppFactory

PAGES = ["/", "/usage", "/models", "/routes", "/playground", "/keys", "/access", "/audit",
         "/bundles", "/registry", "/simulator"]


async def _admin_key(client: Any) -> str:
    store = client.server.app[SERVICES].store
    return (await create_key(store, name="operator", role="admin")).key


async def test_pages_need_sign_in_and_render_empty_states(appliance: AppFactory) -> None:
    client = await appliance()
    resp = await client.get("/keys", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/sign-in?next=/keys"
    resp = await client.post("/sign-in", data={"api_key": "sk-fa-wrong", "next": "/keys"},
                             allow_redirects=False)
    assert "Incorrect API key" in await resp.text()
    key = await _admin_key(client)
    resp = await client.post("/sign-in", data={"api_key": key, "next": "//evil.example/"},
                             allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    for path in PAGES:
        resp = await client.get(path, cookies={SESSION_COOKIE: key})
        body = await resp.text()
        assert resp.status == 200, (path, body[-2000:])
        assert "Content-Security-Policy" in resp.headers
        assert 'class="empty"' in body or path in ("/", "/playground", "/simulator",
                                                   "/keys", "/audit", "/access"), path


async def test_doors_check_csrf_and_forward_to_the_control_api(appliance: AppFactory) -> None:
    client = await appliance()
    key = await _admin_key(client)
    cookies = {SESSION_COOKIE: key}
    assert (await client.get("/ui/api/keys")).status == 401
    page = await (await client.get("/keys", cookies=cookies)).text()
    csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    resp = await client.post("/ui/api/keys", json={"name": "x"}, cookies=cookies)
    assert resp.status == 403
    resp = await client.post("/ui/api/keys", json={"name": "from-ui"}, cookies=cookies,
                             headers={CSRF_HEADER: csrf})
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["key"].startswith("sk-fa-")
    resp = await client.post("/ui/api/keys", json={"name": " "}, cookies=cookies,
                             headers={CSRF_HEADER: csrf})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "name"
    resp = await client.get("/ui/usage.csv?group_by=key&window=1d", cookies=cookies)
    assert resp.status == 200 and (await resp.text()).startswith("key,key_name,requests")
    # an inference key cannot use the console
    resp = await client.post("/sign-in", data={"api_key": created["key"]},
                             allow_redirects=False)
    assert "admin" in await resp.text()


async def test_overview_events_stream(appliance: AppFactory) -> None:
    client = await appliance()
    key = await _admin_key(client)
    resp = await client.get("/ui/events?window=1h", cookies={SESSION_COOKIE: key})
    assert resp.headers["Content-Type"] == "text/event-stream"
    line = b""
    while not line.startswith(b"data:"):
        line = await resp.content.readline()
    assert b'"totals"' in line and b'"series"' in line
    resp.close()
