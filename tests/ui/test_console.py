"""The console without a browser: sign-in, CSRF, the doors to /api, empty states."""

from __future__ import annotations

from typing import Any

from appliance.app import SERVICES
from appliance.gateway.keys import create_key
from appliance.ui.auth import CSRF_HEADER, SESSION_COOKIE
from tests.conftest import AppFactory

PAGES = ["/", "/usage", "/models", "/routes", "/playground", "/hosts", "/deployments", "/keys",
         "/access", "/audit", "/bundles", "/registry", "/simulator"]


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


async def _user_session(client: Any, admin: dict[str, str], name: str, role: str) -> str:
    """Create a user with ``role`` and sign them in; their identity session cookie."""
    resp = await client.post("/api/users", headers=admin,
                             json={"username": name, "role": role, "password": "pw-" + name * 2})
    assert resp.status == 201, await resp.text()
    resp = await client.post("/api/auth/login",
                             json={"username": name, "password": "pw-" + name * 2})
    assert resp.status == 200, await resp.text()
    token = resp.cookies["fa_session"].value
    client.session.cookie_jar.clear()
    return token


async def test_hosts_and_deployments_pages_by_role(appliance: AppFactory, monkeypatch: Any) -> None:
    from appliance.identity import rbac
    from tests.ui.seed import seed

    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "admin-password-123")
    client = await appliance()
    services = client.server.app[SERVICES]
    seed(services.data_dir)
    resp = await client.post("/api/auth/login",
                             json={"username": "admin", "password": "admin-password-123"})
    assert resp.status == 200, await resp.text()
    admin = {"Cookie": f"fa_session={resp.cookies['fa_session'].value}",
             "X-CSRF-Token": (await resp.json())["csrf_token"]}
    client.session.cookie_jar.clear()
    otto = await _user_session(client, admin, "otto", "operator")
    vera = await _user_session(client, admin, "vera", "viewer")

    async def get(path: str, token: str) -> str:
        resp = await client.get(path, cookies={"fa_session": token}, allow_redirects=False)
        body = await resp.text()
        assert resp.status == 200, (path, resp.status, body[-2000:])
        return body

    # an operator: the nav section, the table with facts, the forms and actions
    body = await get("/hosts", otto)
    assert ">Infrastructure</h2>" in body and 'href="/deployments"' in body
    assert 'id="add-host"' in body and 'id="run-form"' in body
    assert 'data-check="gpu-01"' in body and "8 \u00d7 h100-sxm" in body
    assert "to accept" in body and 'data-accept-key="cpu-02"' in body
    assert 'href="/hosts/gpu-01"' in body and "never run" in body  # cpu-02 has no preflight
    body = await get("/hosts/gpu-01", otto)
    assert "Intel(R) Xeon(R) Platinum 8480" in body and "AMX" in body
    assert body.count('<span class="badge ok">h100-sxm</span>') == 8
    assert "foundry.appliance/gpu=h100-sxm" in body and 'aria-current="page"' in body
    assert (await client.get("/hosts/nope", cookies={"fa_session": otto})).status == 404
    body = await get("/deployments", otto)
    assert "No models to deploy" in body  # this appliance has none imported
    assert 'data-review="dep_seedproposal"' in body and "dep_seedserving" in body

    # a viewer: no hosts.read, so neither the navigation entry nor the inventory
    body = await get("/hosts", vera)
    assert 'href="/hosts"' not in body and ">Infrastructure</h2>" not in body
    assert 'id="add-host"' not in body and "gpu-01" not in body
    assert "not available to your role" in body
    body = await get("/deployments", vera)
    assert 'id="propose-form"' not in body and "dep_seedserving" not in body
    # a viewer allowed to read hosts but not to change them: the table, no form, no actions
    monkeypatch.setitem(rbac.GLOBAL_ROLES, "viewer",
                        rbac.GLOBAL_ROLES["viewer"] | {"hosts.read", "deployments.read"})
    body = await get("/hosts", vera)
    assert 'href="/hosts"' in body and "gpu-01" in body and "read-only" in body
    assert 'id="add-host"' not in body and 'id="run-form"' not in body
    assert "data-check=" not in body and 'data-method="DELETE"' not in body
    body = await get("/hosts/gpu-01", vera)
    assert "h100-sxm" in body and 'id="check-host"' not in body
    body = await get("/deployments", vera)
    assert "dep_seedserving" in body and 'id="propose-form"' not in body
    assert "data-review=" not in body

    # the add form's errors come back with the field they belong to
    page = await get("/hosts", otto)
    csrf = page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    resp = await client.post("/ui/api/hosts", cookies={"fa_session": otto},
                             headers={CSRF_HEADER: csrf},
                             json={"name": "Bad Name", "address": "10.0.0.9", "password": "x"})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "name"
