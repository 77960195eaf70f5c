"""OIDC sign-in against a real local provider (npm oidc-provider, run by node)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from appliance.app import build_app
from appliance.identity import oidc
from appliance.settings import load_settings
from tests.conftest import free_port

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
INSTALL = ("cd tests/identity/oidc_provider && npm install "
           "(node and npm: apt-get install nodejs npm)")


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture(scope="module")
def provider(ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node = shutil.which("node")
    if node is None or not (PROVIDER_DIR / "node_modules" / "oidc-provider").exists():
        pytest.fail(f"the OIDC test provider is not installed: {INSTALL}")
    idp_port, app_port = ports
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    proc = subprocess.Popen([node, "server.mjs", str(idp_port),
                             f"http://127.0.0.1:{app_port}/api/auth/oidc/callback"],
                            cwd=PROVIDER_DIR, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", idp_port), 0.5):
            break
        if proc.poll() is not None:
            pytest.fail("oidc-provider exited: " + log.read_text())
        time.sleep(0.1)
    yield f"http://127.0.0.1:{idp_port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def app_url(provider: str, ports: tuple[int, int], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Any]]:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "admin-password-123")
    monkeypatch.setenv("TEST_OIDC_SECRET", "appliance-client-secret")
    _, app_port = ports
    settings = load_settings(environ={}, overrides={
        "data_dir": str(tmp_path / "data"), "starter_bundle": str(tmp_path / "none"),
        "engine": {"enabled": False},
        "identity": {"oidc": {
            "enabled": True, "issuer": provider, "client_id": "appliance",
            "client_secret_env": "TEST_OIDC_SECRET",
            "redirect_uri": f"http://127.0.0.1:{app_port}/api/auth/oidc/callback",
            "scopes": ["openid", "profile", "email", "groups"],
            "role_map": {"appliance-admins": "admin", "ml-devs": "developer"}}}})
    app = build_app(settings)
    server = TestServer(app, host="127.0.0.1", port=app_port)
    await server.start_server()
    yield f"http://127.0.0.1:{app_port}", app
    await server.close()


def _browser() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _to_callback(session: aiohttp.ClientSession, start: str) -> URL:
    """Follow the redirects from the appliance through the provider up to the callback."""
    url = URL(start)
    for _ in range(10):
        async with session.get(url, allow_redirects=False) as resp:
            location = resp.headers.get("Location")
            assert location, (resp.status, await resp.text())
        url = url.join(URL(location))
        if url.path == "/api/auth/oidc/callback":
            return url
    raise AssertionError("no callback reached")


async def test_code_flow_with_pkce_maps_groups(app_url: tuple[str, Any]) -> None:
    base, _ = app_url
    for user, role in (("alice", "admin"), ("bob", "developer")):
        async with _browser() as browser:
            resp = await browser.get(f"{base}/api/auth/oidc/login?login_hint={user}")
            assert resp.status == 200, await resp.text()
            me = await (await browser.get(f"{base}/api/auth/me")).json()
            assert (me["user"]["username"], me["user"]["role"], me["user"]["source"]) == \
                (user, role, "oidc")
    async with _browser() as browser:
        resp = await browser.get(f"{base}/api/auth/oidc/login?login_hint=carol")
        assert resp.status == 401  # in no mapped group


async def test_state_mismatch(app_url: tuple[str, Any]) -> None:
    base, _ = app_url
    async with _browser() as browser:
        callback = await _to_callback(browser, f"{base}/api/auth/oidc/login?login_hint=bob")
        forged = callback.update_query(state="attacker-state")
        resp = await browser.get(forged)
        assert resp.status == 401
        assert "state" in (await resp.json())["error"]["message"]
        assert (await browser.get(f"{base}/api/auth/me")).status == 401
    # a callback without the browser's flow cookie (login CSRF) is refused too
    async with _browser() as browser:
        callback = await _to_callback(browser, f"{base}/api/auth/oidc/login?login_hint=bob")
    async with _browser() as other:
        resp = await other.get(callback)
        assert resp.status == 401


async def test_nonce_mismatch(app_url: tuple[str, Any]) -> None:
    base, app = app_url
    from appliance.identity.http import IDENTITY

    client = app[IDENTITY].oidc
    async with _browser() as browser:
        callback = await _to_callback(browser, f"{base}/api/auth/oidc/login?login_hint=bob")
        for flow in client._flows.values():
            flow.nonce = "a-different-nonce"
        resp = await browser.get(callback)
        assert resp.status == 401
        assert "nonce" in (await resp.json())["error"]["message"]


def _tamper(token: str, **claims: Any) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(claims)
    new = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    return f"{head}.{new}.{sig}"


async def test_tampered_id_token(app_url: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
                                 ) -> None:
    base, app = app_url
    from appliance.identity.http import IDENTITY

    client = app[IDENTITY].oidc
    real_redeem = client._redeem
    captured: list[str] = []

    async def tampering(code: str, verifier: str) -> dict[str, Any]:
        tokens = await real_redeem(code, verifier)
        captured.append(tokens["id_token"])
        tokens["id_token"] = _tamper(tokens["id_token"], groups=["appliance-admins"])
        return tokens
    monkeypatch.setattr(client, "_redeem", tampering)
    async with _browser() as browser:
        resp = await browser.get(f"{base}/api/auth/oidc/login?login_hint=bob")
        assert resp.status == 401
        assert "signature" in (await resp.json())["error"]["message"]
    # the untampered token verifies; 'none' and foreign audiences do not
    jwks = await client.jwks()
    _, body, _ = captured[0].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    ok = oidc.verify_id_token(captured[0], jwks, issuer=client.settings.issuer,
                              client_id="appliance", nonce=claims["nonce"])
    assert ok["sub"] == "bob"
    none_head = base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=")
    for bad, kw in ((f"{none_head}.{body}.", {}),
                    (captured[0], {"client_id": "someone-else"}),
                    (captured[0], {"issuer": "http://evil"})):
        args = {"issuer": client.settings.issuer, "client_id": "appliance",
                "nonce": claims["nonce"], **kw}
        with pytest.raises(oidc.OidcError):
            oidc.verify_id_token(bad, jwks, **args)
    with pytest.raises(oidc.OidcError, match="expired"):
        oidc.verify_id_token(captured[0], jwks, issuer=client.settings.issuer,
                             client_id="appliance", nonce=claims["nonce"],
                             now=claims["exp"] + 3600)


def test_provider_files_present() -> None:
    assert (PROVIDER_DIR / "server.mjs").exists()
    assert os.access(PROVIDER_DIR / "package.json", os.R_OK)
