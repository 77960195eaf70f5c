"""The permission table: every /api route has an entry, and every role gets what it says."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance.identity import rbac
from appliance.identity.rbac import Principal
from tests.identity.conftest import ADMIN_PASSWORD, services

PASSWORD = "persona-password-1"


def test_every_registered_api_route_has_a_table_entry(app_client: TestClient[Any, Any]) -> None:
    missing = []
    for route in app_client.server.app.router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith("/api"):
            continue
        if route.method == "HEAD":
            continue
        if rbac.rule_for(route.method, resource.canonical) is None:
            missing.append(f"{route.method} {resource.canonical}")
    assert not missing, ("add these routes to ROUTE_RULES in appliance/identity/rbac.py: "
                         f"{missing}")


def test_table_entries_name_known_permissions() -> None:
    for rule in rbac.ROUTE_RULES:
        assert rule.permission in rbac.ALL_PERMISSIONS | {rbac.PUBLIC, rbac.AUTHENTICATED}
    for perms in (*rbac.GLOBAL_ROLES.values(), *rbac.PROJECT_ROLES.values()):
        assert perms <= rbac.ALL_PERMISSIONS


def test_permissions_doc_is_generated_from_the_table() -> None:
    from pathlib import Path

    doc = Path(__file__).resolve().parents[2] / "docs" / "permissions.md"
    assert doc.read_text() == rbac.permissions_markdown(), \
        "regenerate: appliance users permissions --markdown > docs/permissions.md"


async def _login(client: TestClient[Any, Any], username: str, password: str) -> dict[str, str]:
    resp = await client.post("/api/auth/login", json={"username": username,
                                                      "password": password})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    token = resp.cookies["fa_session"].value
    client.session.cookie_jar.clear()
    return {"Cookie": f"fa_session={token}", "X-CSRF-Token": body["csrf_token"]}


async def _setup(client: TestClient[Any, Any]) -> dict[str, Any]:
    """Users of every role, projects alpha (developer's) and beta, a key in each."""
    admin = await _login(client, "admin", ADMIN_PASSWORD)
    for name, role in (("vera", "viewer"), ("dev", "developer"), ("otto", "operator"),
                       ("ada", "admin")):
        resp = await client.post("/api/users", headers=admin,
                                 json={"username": name, "role": role, "password": PASSWORD})
        assert resp.status == 201, await resp.text()
    for project in ("alpha", "beta"):
        assert (await client.post("/api/projects", headers=admin,
                                  json={"id": project, "name": project})).status == 201
    resp = await client.post("/api/projects/alpha/members", headers=admin,
                             json={"user": "dev", "role": "developer"})
    assert resp.status == 201, await resp.text()
    keys = {}
    for project in ("alpha", "beta"):
        resp = await client.post("/api/keys", headers=admin,
                                 json={"name": f"{project}-key", "project_id": project})
        keys[project] = (await resp.json())["id"]
    store = services(client).store
    from appliance.gateway.keys import create_key

    admin_key = (await create_key(store, name="adm", role="admin")).key
    inference_key = (await create_key(store, name="inf")).key
    personas: dict[str, tuple[dict[str, str], Principal]] = {
        "anonymous": ({}, rbac.ANONYMOUS),
        "admin-key": ({"Authorization": f"Bearer {admin_key}"},
                      Principal(kind="key", name="k", role="admin")),
        "inference-key": ({"Authorization": f"Bearer {inference_key}"},
                          Principal(kind="key", name="k")),
    }
    for name, role, projects in (("vera", "viewer", {}), ("dev", "developer",
                                                            {"alpha": "developer"}),
                                 ("otto", "operator", {}), ("ada", "admin", {})):
        personas[name] = (await _login(client, name, PASSWORD),
                          Principal(kind="user", name=name, role=role, projects=projects))
    return {"personas": personas, "keys": keys}


def _concrete(path: str, keys: dict[str, str], project: str) -> str:
    values = {"id": "does-not-exist", "name": "does-not-exist", "model": "does-not-exist",
              "user_id": "usr_none"}
    if path.startswith("/api/projects/"):
        values["id"] = project
    if path.startswith("/api/keys/"):
        values["id"] = keys[project]
    return re.sub(r"\{(\w+)[^}]*\}", lambda m: values[m.group(1)], path)


async def test_authorization_matrix(app_client: TestClient[Any, Any]) -> None:
    """Every route as anonymous, inference key, admin key, viewer, developer, operator, admin."""
    ctx = await _setup(app_client)
    failures = []
    for rule in rbac.ROUTE_RULES:
        if rule.path == "/api/auth/logout":
            continue  # ends the persona's session; tested in test_sessions
        for persona, (headers, principal) in ctx["personas"].items():
            path = _concrete(rule.path, ctx["keys"], "beta")
            kw: dict[str, Any] = {} if rule.method == "GET" else {"json": {}}
            resp = await app_client.request(rule.method, path, headers=headers, **kw)
            if rule.permission == rbac.PUBLIC:
                expected = "allowed"
            elif principal.kind == "anonymous":
                expected = "401"
            elif principal.kind == "key" and principal.role is None:
                expected = "403"
            else:
                expected = "allowed" if principal.allowed(rule) else "403"
            got = str(resp.status) if resp.status in (401, 403) else "allowed"
            if resp.status == 403 and (await resp.json())["error"]["code"] == "csrf_failed":
                got = "csrf"
            if got != expected:
                failures.append(f"{persona} {rule.method} {path}: expected {expected}, got "
                                f"{resp.status} {await resp.text()}")
    assert not failures, "\n".join(failures)


async def test_developer_own_and_foreign_project(app_client: TestClient[Any, Any]) -> None:
    ctx = await _setup(app_client)
    dev = ctx["personas"]["dev"][0]
    keys = ctx["keys"]
    # own project: sees and manages its keys
    listed = await (await app_client.get("/api/keys", headers=dev)).json()
    assert {k["id"] for k in listed} == {keys["alpha"]}
    resp = await app_client.post("/api/keys", headers=dev,
                                 json={"name": "mine", "project_id": "alpha"})
    assert resp.status == 201
    assert (await app_client.get("/api/projects/alpha", headers=dev)).status == 200
    assert [p["id"] for p in await (await app_client.get("/api/projects",
                                                          headers=dev)).json()] == ["alpha"]
    # foreign project: everything answers 404, never 403
    for method, path, body in (
            ("DELETE", f"/api/keys/{keys['beta']}", None),
            ("POST", f"/api/keys/{keys['beta']}/rotate", None),
            ("POST", "/api/keys", {"name": "x", "project_id": "beta"}),
            ("GET", "/api/projects/beta", None),
            ("GET", "/api/projects/beta/members", None),
            ("POST", "/api/projects/alpha/members", {"user": "vera"})):
        resp = await app_client.request(method, path, headers=dev, json=body)
        expected = 403 if path.endswith("alpha/members") else 404
        assert resp.status == expected, (method, path, await resp.text())
    # a developer cannot mint admin keys even in their own project
    resp = await app_client.post("/api/keys", headers=dev,
                                 json={"name": "x", "project_id": "alpha", "role": "admin"})
    assert resp.status == 400
    # the foreign key still works
    admin = ctx["personas"]["ada"][0]
    listed = await (await app_client.get("/api/keys", headers=admin)).json()
    assert keys["beta"] in {k["id"] for k in listed}


@pytest.mark.parametrize("role", list(rbac.GLOBAL_ROLES))
def test_principal_role_grants(role: str) -> None:
    p = Principal(kind="user", name="u", role=role)
    assert p.has("status.read")
    assert p.has("users.write") == (role == "admin")
