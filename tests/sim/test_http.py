"""`/api/sim/*` on a bare application."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.sim.http import RUNS_KEY, add_routes


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_routes(app)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_predict_route(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post(
        "/api/sim/predict",
        json={
            "model": "llama-2-7b",
            "gpu": "a100-80g",
            "input_tokens": 256,
            "output_tokens": 64,
            "batch": 4,
            "method": "heuristic",
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["fits"] and body["method"] == "heuristic" and body["tpot_ms"] > 0
    assert client.app is not None and len(client.app[RUNS_KEY].memory) == 1
    assert resp.headers["X-Sim-Run-Id"] == client.app[RUNS_KEY].memory[0].id


async def test_recommend_route(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post(
        "/api/sim/recommend",
        json={
            "model": "llama-3-8b",
            "gpu": ["l4", "h100-sxm"],
            "gpus": 4,
            "input_tokens": 512,
            "output_tokens": 128,
            "concurrency": 8,
            "ttft_ms": 1000,
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["feasible"] and body["candidates"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"model": "llama-2-7b"}, "invalid_request"),
        (
            {"model": "llama-2-7b", "gpu": "zz", "input_tokens": 1, "output_tokens": 1},
            "unknown_gpu",
        ),
        ({"model": "x-1b", "gpu": "t4", "input_tokens": 1, "output_tokens": 1}, "unknown_model"),
        (
            {"model": "llama-2-7b", "gpu": "t4", "input_tokens": 1, "output_tokens": 1, "extra": 1},
            "invalid_request",
        ),
    ],
)
async def test_errors_are_enveloped(
    client: TestClient[web.Request, web.Application], payload: dict[str, object], code: str
) -> None:
    resp = await client.post("/api/sim/predict", json=payload)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_bad_json(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/api/sim/recommend", data=b"{not json")
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_request"
