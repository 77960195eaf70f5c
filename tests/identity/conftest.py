"""Identity fixtures: an in-process appliance with a known admin password, sign-in helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

ADMIN_PASSWORD = "admin-password-123"


class Browser:
    """A signed-in cookie client: remembers the CSRF token and sends it on writes."""

    def __init__(self, client: TestClient[Any, Any], csrf: str) -> None:
        self.client = client
        self.csrf = csrf

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", self.csrf)
        return await self.client.request(method, path, headers=headers, **kw)


async def sign_in(client: TestClient[Any, Any], username: str, password: str) -> Browser:
    resp = await client.post("/api/auth/login", json={"username": username,
                                                      "password": password})
    assert resp.status == 200, await resp.text()
    return Browser(client, (await resp.json())["csrf_token"])


@pytest.fixture
async def app_client(appliance: Any, monkeypatch: pytest.MonkeyPatch
                     ) -> AsyncIterator[TestClient[Any, Any]]:
    """A fresh appliance whose first admin has ``ADMIN_PASSWORD``."""
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", ADMIN_PASSWORD)
    yield await appliance()


def services(client: TestClient[Any, Any]) -> Any:
    from appliance.app import SERVICES

    return client.server.app[SERVICES]
