"""The console without a browser: sign-in, CSRF, the doors to /api, empty states."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path
from typing import Any

from appliance.app import SERVICES
from appliance.gateway.keys import create_key
from appliance.ui.auth import CSRF_HEADER, SESSION_COOKIE
from tests.bundle.conftest import gguf, trust, write_recipe
from tests.conftest import AppFactory
from tests.identity.conftest import ADMIN_PASSWORD, sign_in

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


# --- bundle uploads through the door: streamed, not limited by server.max_body_bytes ---------


def _bundle_tar(root: Path, key: Any, *, model_bytes: int = 16388) -> Path:
    """A signed bundle of the small test recipe, as one tar under ``root``."""
    from appliance.bundle.create import create_bundle
    from appliance.bundle.recipe import load_recipe

    root.mkdir(parents=True, exist_ok=True)
    out = root / "bundle"
    create_bundle(load_recipe(write_recipe(root, model=gguf(model_bytes))), out, sign_key=key)
    tar = root / "bundle.tar"
    with tarfile.open(tar, "w") as f:
        f.add(out, arcname=".")
    return tar


async def _signed_in(appliance: AppFactory, tmp_path: Path, monkeypatch: Any,
                     config: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """An appliance that trusts a fresh signing key, and the admin signed in (Browser)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    trust(tmp_path / "data", key)  # the data dir the appliance fixture uses
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", ADMIN_PASSWORD)
    client = await appliance(config)
    return key, await sign_in(client, "admin", ADMIN_PASSWORD)


async def _finished(user: Any, status_url: str) -> dict[str, Any]:
    for _ in range(200):
        job: dict[str, Any] = await (await user.call("GET", "/ui" + status_url)).json()
        if job["state"] in ("success", "error"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"the import job did not finish: {job}")


async def test_bundle_upload_through_the_door(appliance: AppFactory, tmp_path: Path,
                                              monkeypatch: Any) -> None:
    key, user = await _signed_in(appliance, tmp_path, monkeypatch)
    tar = _bundle_tar(tmp_path / "usb", key)
    assert (await user.client.post("/ui/api/bundles", data=tar.read_bytes())).status == 403
    resp = await user.call("POST", "/ui/api/bundles?filename=C%3A%5Cusb%5Csite.tar",
                           data=tar.read_bytes(), headers={"Content-Type": "application/x-tar"})
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["bytes_received"] == tar.stat().st_size
    job = await _finished(user, started["status_url"])
    assert job["state"] == "success", job
    assert job["percent"] == 100.0 and job["origin"] == "upload"
    assert job["source"] == "upload:site.tar"  # the sender's file name, not the temporary copy
    assert job["result"]["name"] == "site-starter"
    assert job["result"]["models"] == ["my-local-model"]
    assert job["result"]["signed_by"]
    page = await (await user.call("GET", "/bundles")).text()
    assert "site-starter" in page and "my-local-model 1.0.0" in page and "upload:site.tar" in page
    assert not list((tmp_path / "data" / "uploads").iterdir())
    # a corrupt tar is accepted as an upload, and its import fails with a reason
    resp = await user.call("POST", "/ui/api/bundles?filename=bad.tar",
                           data=b"not a tar at all " * 4096)
    assert resp.status == 202, await resp.text()
    job = await _finished(user, (await resp.json())["status_url"])
    assert job["state"] == "error", job
    assert job["error"].startswith("upload:bad.tar is not an uncompressed tar archive"), job
    # a path on the host, imported from the page with server-sent progress
    other = _bundle_tar(tmp_path / "usb2", key, model_bytes=20000)
    resp = await user.call("POST", "/ui/bundles/import", json={"path": str(other)})
    assert resp.status == 200 and "event: done" in await resp.text()
    # every import is in the audit trail, by who started it, successes and failures alike
    entries = await (await user.call("GET", "/api/audit?action=bundle.import")).json()
    got = sorted((e["actor"], e["outcome"], e["detail"]["source"]) for e in entries)
    assert got == sorted([("user:admin", "failure", "upload:bad.tar"),
                          ("user:admin", "success", "upload:site.tar"),
                          ("user:admin", "success", str(other))]), got

async def test_uploads_larger_than_max_body_bytes_stream(appliance: AppFactory, tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    limit = 64 * 1024
    key, user = await _signed_in(appliance, tmp_path, monkeypatch,
                                 {"server": {"max_body_bytes": limit}})
    tar = _bundle_tar(tmp_path / "usb", key, model_bytes=6 * limit)
    data = tar.read_bytes()
    assert len(data) > 5 * limit

    async def chunked() -> Any:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(data), 10_000):
            yield data[i:i + 10_000]

    for body in (data, chunked()):  # with a Content-Length, and chunked
        resp = await user.call("POST", "/ui/api/bundles", data=body)
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["bytes_received"] == len(data)
        job = await _finished(user, (await resp.json())["status_url"])
        assert job["state"] == "success", job
    # the direct route is not limited either
    resp = await user.call("POST", "/api/bundles", data=data)
    assert resp.status == 202, await resp.text()
    assert (await _finished(user, (await resp.json())["status_url"]))["state"] == "success"
    # a JSON call still meets the limit, where its handler reads the body whole
    resp = await user.call("POST", "/ui/api/keys", json={"name": "x" * (2 * limit)})
    assert resp.status == 400
    assert "exceeded" in (await resp.json())["error"]["message"]
    # small JSON calls through the door keep working
    resp = await user.call("POST", "/ui/api/keys", json={"name": "after-upload"})
    assert resp.status == 201, await resp.text()
    # a refusal upstream that comes before the body is read reaches the browser as such
    resp = await user.call("POST", "/api/users", json={"username": "vera", "role": "viewer",
                                                       "password": "pw-vera-vera"})
    assert resp.status == 201, await resp.text()
    user.client.session.cookie_jar.clear()
    viewer = await sign_in(user.client, "vera", "pw-vera-vera")
    resp = await viewer.call("POST", "/ui/api/bundles", data=data * 8)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "permission_denied"
    resp = await viewer.call("POST", "/ui/bundles/import", json={"path": str(tar)})
    assert resp.status == 403  # nor from a path on the host
