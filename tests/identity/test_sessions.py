"""Sign-in, sessions, cookies, CSRF, throttling and lockout over HTTP."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.identity.conftest import ADMIN_PASSWORD, sign_in


async def test_login_me_logout(app_client: TestClient[Any, Any]) -> None:
    resp = await app_client.post("/api/auth/login",
                                 json={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 200
    body = await resp.json()
    assert body["user"]["username"] == "admin" and body["user"]["role"] == "admin"
    assert "password_hash" not in body["user"]
    cookie = resp.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("fa_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Strict" in session_cookie
    assert "Path=/" in session_cookie
    me = await app_client.get("/api/auth/me")
    assert me.status == 200
    assert (await me.json())["csrf_token"] == body["csrf_token"]
    # a state change without the CSRF header is refused, with it accepted
    no_csrf = await app_client.post("/api/projects", json={"id": "p1", "name": "P1"})
    assert no_csrf.status == 403
    assert (await no_csrf.json())["error"]["code"] == "csrf_failed"
    ok = await app_client.post("/api/projects", json={"id": "p1", "name": "P1"},
                               headers={"X-CSRF-Token": body["csrf_token"]})
    assert ok.status == 201, await ok.text()
    out = await app_client.post("/api/auth/logout",
                                headers={"X-CSRF-Token": body["csrf_token"]})
    assert out.status == 200
    assert (await app_client.get("/api/auth/me")).status == 401


async def test_wrong_password_and_unknown_user_look_the_same(
        app_client: TestClient[Any, Any]) -> None:
    a = await app_client.post("/api/auth/login", json={"username": "admin", "password": "x"})
    b = await app_client.post("/api/auth/login", json={"username": "nobody", "password": "x"})
    assert a.status == b.status == 401
    assert (await a.json())["error"] == (await b.json())["error"]
    assert "fa_session" not in a.cookies


async def test_login_needs_json(app_client: TestClient[Any, Any]) -> None:
    resp = await app_client.post("/api/auth/login",
                                 data={"username": "admin", "password": ADMIN_PASSWORD})
    assert resp.status == 400


async def test_browser_helper(app_client: TestClient[Any, Any]) -> None:
    browser = await sign_in(app_client, "admin", ADMIN_PASSWORD)
    resp = await browser.call("GET", "/api/users")
    assert resp.status == 200
    assert [u["username"] for u in await resp.json()] == ["admin"]
