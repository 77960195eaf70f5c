"""The issue's attack list: each a test (the OIDC and LDAP ones live in their own modules)."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp.test_utils import TestClient

from appliance.gateway.keys import create_key, revoke_key
from tests.identity.conftest import ADMIN_PASSWORD, services, sign_in


async def _new_user(client: TestClient[Any, Any], name: str, role: str = "viewer") -> None:
    admin = await sign_in(client, "admin", ADMIN_PASSWORD)
    resp = await admin.call("POST", "/api/users", json={"username": name, "role": role,
                                                        "password": "right-password-1"})
    assert resp.status == 201, await resp.text()
    await admin.call("POST", "/api/auth/logout")
    client.session.cookie_jar.clear()


async def test_lockout_after_repeated_wrong_passwords(app_client: TestClient[Any, Any]) -> None:
    await _new_user(app_client, "mallory")
    for _ in range(5):
        resp = await app_client.post("/api/auth/login",
                                     json={"username": "mallory", "password": "wrong-one"})
        assert resp.status == 401
    # now even the right password is refused while the lock lasts
    resp = await app_client.post("/api/auth/login",
                                 json={"username": "mallory", "password": "right-password-1"})
    assert resp.status == 401
    audit = await services(app_client).store.fetchall(
        "SELECT outcome, detail FROM audit_log WHERE action='auth.login' AND target='mallory'")
    assert [r[0] for r in audit] == ["failure"] * 6
    assert "account locked" in audit[-1][1]
    # an admin reset unlocks (and forces a password change)
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    users = await (await admin.call("GET", "/api/users")).json()
    uid = next(u["id"] for u in users if u["username"] == "mallory")
    resp = await admin.call("POST", f"/api/users/{uid}/reset-password", json={})
    one_time = (await resp.json())["one_time_password"]
    app_client.session.cookie_jar.clear()
    m = await sign_in(app_client, "mallory", one_time)
    assert (await m.call("GET", "/api/status")).status == 403  # must change first
    resp = await m.call("POST", "/api/auth/password",
                        json={"current_password": one_time, "new_password": "a-new-password"})
    assert resp.status == 200
    assert (await m.call("GET", "/api/status")).status == 200


async def test_source_address_throttle(appliance: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", ADMIN_PASSWORD)
    client = await appliance({"identity": {"address_failures": 3, "lockout_failures": 100}})
    for i in range(3):
        resp = await client.post("/api/auth/login",
                                 json={"username": f"nobody{i}", "password": "x"})
        assert resp.status == 401
    resp = await client.post("/api/auth/login",
                             json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "too_many_sign_ins"


async def test_source_address_throttle_survives_a_restart(appliance: Any,
                                                         monkeypatch: Any) -> None:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", ADMIN_PASSWORD)
    config = {"identity": {"address_failures": 3, "lockout_failures": 100}}
    first = await appliance(config)
    for i in range(3):
        resp = await first.post("/api/auth/login",
                                json={"username": f"nobody{i}", "password": "x"})
        assert resp.status == 401
    refused = await first.post("/api/auth/login",
                               json={"username": "admin", "password": ADMIN_PASSWORD})
    assert refused.status == 429
    before = await refused.json()
    await first.close()

    second = await appliance(config)  # the same data directory, a new process state
    resp = await second.post("/api/auth/login",
                             json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 429
    after = await resp.json()
    assert after["error"]["code"] == before["error"]["code"] == "too_many_sign_ins"
    # /api answers carry the wait in the message (only /v1 answers send Retry-After)
    waits = [int(re.fullmatch(r"too many failed sign-ins from \S+; try again in (\d+) s",
                              body["error"]["message"])[1])  # type: ignore[index]
             for body in (before, after)]
    assert 290 <= waits[1] <= waits[0] <= 300


async def test_throttle_rows_expire_and_success_clears_them(
        app_client: TestClient[Any, Any]) -> None:
    sessions = services(app_client).identity.sessions
    store = services(app_client).store
    start = time.time()
    sessions.throttle._now = lambda: start - 10_000  # failures long past the window
    for i in range(2):
        resp = await app_client.post("/api/auth/login",
                                     json={"username": f"nobody{i}", "password": "x"})
        assert resp.status == 401
    sessions.throttle._now = time.time
    resp = await app_client.post("/api/auth/login", json={"username": "x", "password": "x"})
    assert resp.status == 401
    rows = await store.fetchall("SELECT failed_at FROM login_failures")
    assert len(rows) == 1 and rows[0][0] >= start  # the old ones went with this write
    await sign_in(app_client, "admin", ADMIN_PASSWORD)
    assert await store.fetchall("SELECT * FROM login_failures") == []


async def test_expired_session_idle_and_absolute(app_client: TestClient[Any, Any]) -> None:
    sessions = services(app_client).identity.sessions
    await sign_in(app_client, "admin", ADMIN_PASSWORD)
    assert (await app_client.get("/api/auth/me")).status == 200
    start = time.time()
    sessions.now = lambda: start + sessions.settings.session_idle_s + 1
    assert (await app_client.get("/api/auth/me")).status == 401
    sessions.now = time.time
    await sign_in(app_client, "admin", ADMIN_PASSWORD)
    # stay active (touch each 10 minutes) but pass the absolute limit
    t = start
    while t < start + sessions.settings.session_absolute_s - 600:
        t += 600
        sessions.now = lambda t=t: t
        assert (await app_client.get("/api/auth/me")).status == 200
    sessions.now = lambda: start + sessions.settings.session_absolute_s + 1
    assert (await app_client.get("/api/auth/me")).status == 401


async def test_forged_and_replayed_cookies(app_client: TestClient[Any, Any]) -> None:
    resp = await app_client.post("/api/auth/login",
                                 json={"username": "admin", "password": ADMIN_PASSWORD})
    body = await resp.json()
    token = resp.cookies["fa_session"].value
    app_client.session.cookie_jar.clear()
    forged = {"Cookie": "fa_session=" + token[:-4] + "AAAA"}
    assert (await app_client.get("/api/auth/me", headers=forged)).status == 401
    # the stored hash is not a cookie either
    row = await services(app_client).store.fetchone("SELECT token_hash FROM sessions")
    assert (await app_client.get("/api/auth/me",
                                 headers={"Cookie": f"fa_session={row[0]}"})).status == 401
    good = {"Cookie": f"fa_session={token}"}
    assert (await app_client.get("/api/auth/me", headers=good)).status == 200
    out = await app_client.post("/api/auth/logout",
                                headers={**good, "X-CSRF-Token": body["csrf_token"]})
    assert out.status == 200
    # replaying the cookie after logout
    assert (await app_client.get("/api/auth/me", headers=good)).status == 401


async def test_csrf_less_and_wrong_csrf_posts(app_client: TestClient[Any, Any]) -> None:
    browser = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
        resp = await app_client.post("/api/users", headers=headers,
                                     json={"username": "eve", "password": "password-123"})
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "csrf_failed"
    # a cross-site HTML form (urlencoded) cannot sign a browser in either
    resp = await app_client.post("/api/auth/login", data="username=admin&password=x",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400
    assert (await browser.call("POST", "/api/users", json={
        "username": "eve", "password": "password-123"})).status == 201


async def test_revoked_and_expired_keys(app_client: TestClient[Any, Any]) -> None:
    store = services(app_client).store
    expired = await create_key(store, name="old", role="admin", expires_at=time.time() - 1)
    revoked = await create_key(store, name="gone", role="admin")
    await revoke_key(store, revoked.id)
    services(app_client).verifier.invalidate()
    for key in (expired.key, revoked.key):
        headers = {"Authorization": f"Bearer {key}"}
        assert (await app_client.get("/api/status", headers=headers)).status == 401
        resp = await app_client.post("/v1/chat/completions", headers=headers,
                                     json={"model": "m", "messages": [
                                         {"role": "user", "content": "hi"}]})
        assert resp.status == 401


async def test_injection_in_usernames(app_client: TestClient[Any, Any]) -> None:
    for name in ("admin' --", "admin' OR '1'='1", "*)(uid=*", "admin)(|(uid=*",
                 "../../etc/passwd", "admin\x00", "a" * 500):
        resp = await app_client.post("/api/auth/login",
                                     json={"username": name, "password": ADMIN_PASSWORD})
        assert resp.status == 401, name
        assert "fa_session" not in resp.cookies
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    resp = await admin.call("POST", "/api/users", json={"username": "x' OR 1=1 --",
                                                         "password": "password-123"})
    assert resp.status == 400
    rows = await services(app_client).store.fetchall("SELECT username FROM users")
    assert [r[0] for r in rows] == ["admin"]


async def test_path_traversal_in_file_fields(app_client: TestClient[Any, Any]) -> None:
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    for path in ("../../../../etc", "/etc/../etc/passwd", "bundle/../../../root"):
        resp = await admin.call("POST", "/api/bundles/import", json={"path": path})
        assert 400 <= resp.status < 500, (path, resp.status, await resp.text())
    # identity's own file-taking routes take no paths from requests; the CA download is fixed
    resp = await app_client.get("/api/tls/ca.pem/../../state.db")
    assert resp.status == 404


async def test_disabled_user_loses_session(app_client: TestClient[Any, Any]) -> None:
    await _new_user(app_client, "temp")
    resp = await app_client.post("/api/auth/login",
                                 json={"username": "temp", "password": "right-password-1"})
    temp_cookie = {"Cookie": f"fa_session={resp.cookies['fa_session'].value}"}
    app_client.session.cookie_jar.clear()
    admin = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    users = await (await admin.call("GET", "/api/users")).json()
    uid = next(u["id"] for u in users if u["username"] == "temp")
    assert (await admin.call("PATCH", f"/api/users/{uid}", json={"disabled": True})).status \
        == 200
    app_client.session.cookie_jar.clear()
    assert (await app_client.get("/api/auth/me", headers=temp_cookie)).status == 401
