"""Recorded simulator runs: ``GET /api/sim/runs`` and ``/api/sim/runs/{id}``, memory and store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.sim.http import RUNS_KEY, add_routes
from appliance.store.state import StateStore

Client = TestClient[web.Request, web.Application]

PREDICT = {
    "model": "llama-2-7b",
    "gpu": "a100-80g",
    "input_tokens": 256,
    "output_tokens": 64,
    "batch": 4,
    "method": "heuristic",
}
RECOMMEND = {
    "model": "llama-3-8b",
    "gpu": ["l4", "h100-sxm"],
    "gpus": 2,
    "input_tokens": 512,
    "output_tokens": 128,
    "concurrency": 4,
    "method": "heuristic",
    "search": "enumerate",
    "limit": 3,
}


@pytest.fixture
async def memory_client() -> AsyncIterator[Client]:
    app = web.Application()
    add_routes(app, lambda: None)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    s = await StateStore(tmp_path).open()
    yield s
    await s.close()


async def _client_on(store: StateStore | None) -> Client:
    app = web.Application()
    add_routes(app, lambda: store)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def _post(client: Client, path: str, body: dict[str, Any]) -> str:
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    return resp.headers["X-Sim-Run-Id"]


async def _check_round_trip(client: Client) -> tuple[str, str]:
    pid = await _post(client, "/api/sim/predict", PREDICT)
    rid = await _post(client, "/api/sim/recommend", RECOMMEND)
    listing = await (await client.get("/api/sim/runs")).json()
    assert [r["id"] for r in listing["runs"]] == [rid, pid]  # newest first
    first = listing["runs"][1]
    assert first["kind"] == "predict" and first["method"] == "heuristic"
    assert first["model"] == "llama-2-7b" and first["request"]["batch"] == 4
    assert first["summary"]["fits"] is True and first["summary"]["ttft_ms"] > 0
    assert listing["runs"][0]["summary"]["top"]["deployment"]["gpu"] in ("l4", "h100-sxm")

    full = await (await client.get(f"/api/sim/runs/{pid}")).json()
    direct = await (await client.post("/api/sim/predict", json=PREDICT)).json()
    assert full["result"] == direct  # the recorded result is the answer itself
    assert full["request"]["gpu"] == "a100-80g" and full["created_at"] > 0

    only = await (await client.get("/api/sim/runs?kind=recommend&limit=5")).json()
    assert [r["id"] for r in only["runs"]] == [rid]
    by_model = await (await client.get("/api/sim/runs?model=llama-3-8b")).json()
    assert [r["id"] for r in by_model["runs"]] == [rid]
    return pid, rid


async def test_runs_in_memory_without_store(memory_client: Client) -> None:
    await _check_round_trip(memory_client)
    assert memory_client.app is not None
    assert len(memory_client.app[RUNS_KEY].memory) == 3


async def test_runs_are_stored_and_outlive_the_app(store: StateStore) -> None:
    client = await _client_on(store)
    try:
        pid, rid = await _check_round_trip(client)
        assert client.app is not None and client.app[RUNS_KEY].memory == []
    finally:
        await client.close()
    rows = await store.fetchall("SELECT id, kind FROM sim_runs ORDER BY created_at")
    assert [(r["id"], r["kind"]) for r in rows][:2] == [(pid, "predict"), (rid, "recommend")]
    # a new application on the same state store sees the earlier runs
    again = await _client_on(store)
    try:
        resp = await again.get(f"/api/sim/runs/{rid}")
        assert resp.status == 200
        assert (await resp.json())["result"]["candidates"]
        page = await (await again.get("/api/sim/runs?limit=1")).json()
        assert len(page["runs"]) == 1
        newest = page["runs"][0]
        older = await again.get(f"/api/sim/runs?before={newest['created_at']}")
        assert newest["id"] not in [r["id"] for r in (await older.json())["runs"]]
    finally:
        await again.close()


async def test_unopened_store_falls_back_to_memory(tmp_path: Path) -> None:
    client = await _client_on(StateStore(tmp_path))  # never opened: writes fail
    try:
        pid = await _post(client, "/api/sim/predict", PREDICT)
        resp = await client.get(f"/api/sim/runs/{pid}")
        assert resp.status == 200 and (await resp.json())["kind"] == "predict"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/sim/runs/nope", 404, "not_found"),
        ("/api/sim/runs?kind=other", 400, "invalid_request"),
        ("/api/sim/runs?limit=x", 400, "invalid_request"),
        ("/api/sim/runs?before=yesterday", 400, "invalid_request"),
    ],
)
async def test_run_errors(memory_client: Client, path: str, status: int, code: str) -> None:
    resp = await memory_client.get(path)
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code


async def test_failed_requests_are_not_recorded(memory_client: Client) -> None:
    resp = await memory_client.post("/api/sim/predict", json={"model": "llama-2-7b"})
    assert resp.status == 400 and "X-Sim-Run-Id" not in resp.headers
    assert (await (await memory_client.get("/api/sim/runs")).json())["runs"] == []


async def test_store_prunes_to_the_newest(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("appliance.sim.http.MAX_STORED_RUNS", 2)
    client = await _client_on(store)
    try:
        ids = [await _post(client, "/api/sim/predict", PREDICT) for _ in range(3)]
    finally:
        await client.close()
    rows = await store.fetchall("SELECT id FROM sim_runs")
    assert sorted(r["id"] for r in rows) == sorted(ids[1:])


async def test_full_app_records_into_its_state_db(
    appliance: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    client = await appliance({"auth": {"required": False}})
    pid = await _post(client, "/api/sim/predict", PREDICT)
    resp = await client.get(f"/api/sim/runs/{pid}")
    assert resp.status == 200
    conn = sqlite3.connect(tmp_path / "data" / "state.db")
    try:
        assert conn.execute("SELECT kind FROM sim_runs WHERE id=?", (pid,)).fetchone() == (
            "predict",
        )
    finally:
        conn.close()
