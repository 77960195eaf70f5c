"""Keys belong to projects: model allow-lists, address allow-lists and quotas on /v1."""

from __future__ import annotations

import asyncio
from typing import Any

from appliance.gateway.keys import create_key
from appliance.identity import projects
from tests.conftest import start_app
from tests.fakes.openai_server import make_openai_app
from tests.identity.conftest import services


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def _setup(appliance: Any, monkeypatch: Any, **quotas: Any) -> tuple[Any, Any]:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "admin-password-123")
    up = await start_app(make_openai_app())
    client = await appliance({
        "upstreams": [{"name": "gpu", "kind": "openai", "base_url": str(up.make_url("/v1"))}],
        "routes": [{"model": "model-a", "targets": ["gpu"]},
                   {"model": "model-b", "targets": ["gpu"]}]})
    store = services(client).store
    await projects.create_project(store, projects.Project(id="a", name="A", models=["model-a"],
                                                          **quotas), actor="test")
    await projects.create_project(store, projects.Project(id="b", name="B",
                                                          models=["model-b"]), actor="test")
    await services(client).reload()
    return client, up


async def test_key_of_project_a_cannot_use_project_b_model(appliance: Any,
                                                          monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch)
    store = services(client).store
    key_a = (await create_key(store, name="a", project_id="a")).key
    headers = {"Authorization": f"Bearer {key_a}"}
    ok = await client.post("/v1/chat/completions", json=_chat("model-a"), headers=headers)
    assert ok.status == 200, await ok.text()
    denied = await client.post("/v1/chat/completions", json=_chat("model-b"), headers=headers)
    assert denied.status == 404
    assert (await denied.json())["error"]["code"] == "model_not_found"
    models = await (await client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in models["data"]] == ["model-a"]
    assert (await client.get("/v1/models/model-b", headers=headers)).status == 404
    await up.close()


async def test_key_needs_an_existing_project(appliance: Any, monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch)
    import pytest

    from appliance.kernel.errors import NotFound

    with pytest.raises(NotFound):
        await create_key(services(client).store, name="x", project_id="nope")
    await up.close()


async def test_source_address_allowlist(appliance: Any, monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch)
    store = services(client).store
    inside = (await create_key(store, name="in", project_id="a",
                               allowed_ips=["127.0.0.0/8"])).key
    outside = (await create_key(store, name="out", project_id="a",
                                allowed_ips=["10.1.2.0/24"])).key
    resp = await client.post("/v1/chat/completions", json=_chat("model-a"),
                             headers={"Authorization": f"Bearer {inside}"})
    assert resp.status == 200
    resp = await client.post("/v1/chat/completions", json=_chat("model-a"),
                             headers={"Authorization": f"Bearer {outside}"})
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "address_not_allowed"
    await up.close()


async def test_project_token_quota_and_rpm(appliance: Any, monkeypatch: Any) -> None:
    # the fake upstream reports 10 tokens per request
    client, up = await _setup(appliance, monkeypatch, tokens_per_day=25, rpm=100)
    key = (await create_key(services(client).store, name="a", project_id="a")).key
    headers = {"Authorization": f"Bearer {key}"}
    statuses = []
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json=_chat("model-a"),
                                 headers=headers)
        statuses.append(resp.status)
        if resp.status == 429:
            body = await resp.json()
            assert body["error"]["code"] == "quota_exceeded"
            assert int(resp.headers["Retry-After"]) > 0
    assert statuses == [200, 200, 200, 429]
    await up.close()


async def test_key_token_budget(appliance: Any, monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch)
    key = (await create_key(services(client).store, name="a", project_id="a",
                            tokens_per_day=5)).key
    headers = {"Authorization": f"Bearer {key}"}
    first = await client.post("/v1/chat/completions", json=_chat("model-a"), headers=headers)
    second = await client.post("/v1/chat/completions", json=_chat("model-a"), headers=headers)
    assert (first.status, second.status) == (200, 429)
    await up.close()


async def test_quota_counters_seeded_from_metrics(appliance: Any, monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch, tokens_per_day=1000)
    key = (await create_key(services(client).store, name="a", project_id="a")).key
    headers = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=_chat("model-a"),
                                  headers=headers)).status == 200
    await asyncio.sleep(0.3)  # metrics flush
    from appliance.identity.quotas import QuotaGate, seed_query

    s = services(client)
    fresh = QuotaGate()
    fresh.seed(await asyncio.wrap_future(s.metrics.query(seed_query(__import__("time").time()))))
    assert fresh._used["p:a"].day_tokens == s.quotas._used["p:a"].day_tokens == 20
    await up.close()


async def test_concurrency_limit(appliance: Any, monkeypatch: Any) -> None:
    client, up = await _setup(appliance, monkeypatch, max_concurrent=1)
    s = services(client)
    key = (await create_key(s.store, name="a", project_id="a")).key
    from appliance.gateway.keys import ApiKey

    api_key: ApiKey = await s.verifier.verify(f"Bearer {key}")
    s.quotas.admit(api_key, "127.0.0.1")  # one request in flight
    resp = await client.post("/v1/chat/completions", json=_chat("model-a"),
                             headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "concurrency_exceeded"
    s.quotas.release(api_key, 0)
    resp = await client.post("/v1/chat/completions", json=_chat("model-a"),
                             headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    await up.close()


def test_keys_cli_with_project(tmp_path: Any) -> None:
    import json
    import subprocess

    from tests.conftest import appliance_cmd

    data = str(tmp_path)
    subprocess.run(appliance_cmd("projects", "create", "team", "--data-dir", data,
                                 "--models", "m1", "--rpm", "10"), check=True,
                   capture_output=True)
    out = subprocess.run(appliance_cmd("keys", "create", "--data-dir", data, "--name", "k",
                                       "--project", "team", "--json"), check=True,
                         capture_output=True, text=True)
    key_id = json.loads(out.stdout)["id"]
    listed = json.loads(subprocess.run(appliance_cmd("keys", "list", "--data-dir", data,
                                                     "--json"), check=True,
                                       capture_output=True, text=True).stdout)
    assert [(k["id"], k["project_id"]) for k in listed] == [(key_id, "team")]
    bad = subprocess.run(appliance_cmd("keys", "create", "--data-dir", data, "--name", "k",
                                       "--project", "missing"), capture_output=True, text=True)
    assert bad.returncode != 0 and "no project" in bad.stderr
    rotated = subprocess.run(appliance_cmd("keys", "rotate", key_id, "--data-dir", data,
                                           "--json"), check=True, capture_output=True,
                             text=True)
    assert json.loads(rotated.stdout)["id"] == key_id
