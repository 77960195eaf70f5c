"""The gateway against fake upstreams: routing, failover, streaming, errors, limits, metering."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from appliance.gateway.keys import create_key
from tests.conftest import free_port, read_sse, start_app
from tests.fakes.anthropic_server import FAKE_API_KEY, make_anthropic_app
from tests.fakes.openai_server import STATE, make_openai_app

CHAT = {"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}


async def _upstream(**kw: Any) -> TestServer:
    return await start_app(make_openai_app(**kw))


def _config(*upstreams: tuple[str, str], route: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "upstreams": [{"name": n, "kind": "openai", "base_url": u} for n, u in upstreams],
        "routes": [route or {"model": "llama-3-8b", "targets": [n for n, _ in upstreams]}],
        "gateway": {"retry_backoff_s": 0.01, "first_byte_timeout_s": 2.0, **extra},
    }
    return cfg


async def _key(client: Any, **kw: Any) -> dict[str, str]:
    store = client.server.app[_services_key()].store
    created = await create_key(store, name="t", **{"role": "admin", **kw})
    return {"Authorization": f"Bearer {created.key}"}


def _services_key() -> Any:
    from appliance.app import SERVICES

    return SERVICES


async def test_chat_routes_to_upstream_and_records_usage(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "Hello from upstream"
    assert up.app[STATE]["requests"][0]["body"]["model"] == "llama-3-8b"
    await asyncio.sleep(0.2)
    usage = await (await client.get("/api/usage?window=1h", headers=headers)).json()
    row = usage["rows"][0]
    assert (row["group"], row["requests"], row["prompt_tokens"]) == ("llama-3-8b", 1, 7)
    metrics = await (await client.get("/metrics")).text()
    assert 'appliance_requests_total{model="llama-3-8b",endpoint="chat/completions",' \
           'status="200"} 1' in metrics
    assert 'appliance_tokens_total{model="llama-3-8b",type="completion"} 3' in metrics
    await up.close()


async def test_usage_is_attributed_to_the_keys_owner(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    store = client.server.app[_services_key()].store
    created = await create_key(store, name="alice's app", role="admin", actor="user:alice")
    headers = {"Authorization": f"Bearer {created.key}"}
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    await asyncio.sleep(0.2)
    usage = await (await client.get("/api/usage?group_by=user", headers=headers)).json()
    assert [(r["group"], r["requests"]) for r in usage["rows"]] == [("user:alice", 1)]


async def test_stream_is_passed_through_byte_for_byte(appliance: Any) -> None:
    up = await _upstream(reply="one two three four")
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s:
        direct = await (await s.post(up.make_url("/v1/chat/completions"), json=body)).read()
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    through = await resp.read()
    # ids and timestamps match because the fake is deterministic within a second
    strip = lambda b: b.replace(b'"created": ', b"").split(b"\n")  # noqa: E731
    assert len(strip(through)) == len(strip(direct))
    assert through.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' in through


async def test_injected_usage_chunk_is_removed_but_metered(appliance: Any) -> None:
    up = await _upstream(reply="a b c")
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=headers)
    events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    assert not any(b'"usage"' in e for e in events)
    sent = up.app[STATE]["requests"][0]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    await asyncio.sleep(0.2)
    usage = await (await client.get("/api/usage", headers=headers)).json()
    assert usage["rows"][0]["completion_tokens"] == 3


@pytest.mark.parametrize(("payload", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (json.dumps({"model": 5, "messages": []}).encode(), 400, "invalid_type"),
    (json.dumps({"model": "x", "messages": "hi"}).encode(), 400, "invalid_type"),
    (json.dumps({"model": "llama-3-8b", "messages": []}).encode(), 400, "invalid_request"),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
     404, "model_not_found"),
])
async def test_bad_requests_get_openai_errors(appliance: Any, payload: bytes, status: int,
                                              code: str) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = {**(await _key(client)), "Content-Type": "application/json"}
    resp = await client.post("/v1/chat/completions", data=payload, headers=headers)
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code
    assert set(err) == {"message", "type", "param", "code"}


async def test_auth_failures(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "missing_api_key"
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"Authorization": "Bearer sk-fa-wrong"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    store = client.server.app[_services_key()].store
    created = await create_key(store, name="gone")
    from appliance.gateway.keys import revoke_key

    await revoke_key(store, created.id)
    client.server.app[_services_key()].verifier.invalidate()
    resp = await client.post("/v1/chat/completions", json=CHAT,
                             headers={"Authorization": f"Bearer {created.key}"})
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "revoked_api_key"
    assert up.app[STATE]["requests"] == []


async def test_key_limited_to_models(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client, models=["other-model"])
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "model_not_allowed"
    models = await (await client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in models["data"]] == []


async def test_body_over_limit_is_413(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance({**_config(("gpu-a", str(up.make_url("/v1")))),
                              "server": {"max_body_bytes": 1024}})
    headers = await _key(client)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    resp = await client.post("/v1/chat/completions", json=big, headers=headers)
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_requests_per_minute_limit(appliance: Any) -> None:
    up = await _upstream()
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client, rpm=2)
    first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    third = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert third.status == 429
    assert int(third.headers["Retry-After"]) >= 1
    assert (await third.json())["error"]["type"] == "requests"


async def test_tokens_per_minute_limit(appliance: Any) -> None:
    up = await _upstream(reply="w " * 20)
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client, tpm=10)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    second = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert second.status == 429
    assert "tokens per minute" in (await second.json())["error"]["message"]


async def test_failover_to_second_target_when_first_is_down(appliance: Any) -> None:
    up = await _upstream(reply="from b")
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = await appliance(_config(("gpu-a", dead), ("gpu-b", str(up.make_url("/v1")))))
    headers = await _key(client)
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["message"]["content"] == "from b"


async def test_fallback_model_when_route_targets_fail(appliance: Any) -> None:
    bad = await _upstream()
    bad.app[STATE]["mode"] = "fail500"
    good = await _upstream(reply="fallback answer")
    cfg = _config(("gpu-a", str(bad.make_url("/v1"))), ("small", str(good.make_url("/v1"))),
                  route={"model": "llama-3-8b", "targets": ["gpu-a"], "fallback": ["tiny"]})
    cfg["routes"].append({"model": "tiny", "targets": ["small"]})
    client = await appliance(cfg)
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "fallback answer"
    # the fallback upstream is asked for its own model name
    assert good.app[STATE]["requests"][0]["body"]["model"] == "tiny"
    assert len(bad.app[STATE]["requests"]) == 3  # first try + 2 retries


async def test_all_targets_down_is_502(appliance: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = await appliance(_config(("gpu-a", dead)))
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 502
    assert "cannot reach target gpu-a" in (await resp.json())["error"]["message"]


async def test_breaker_opens_after_repeated_failures(appliance: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = await appliance({**_config(("gpu-a", dead), breaker_failures=3, retries=0)})
    headers = await _key(client)
    for _ in range(3):
        assert (await client.post("/v1/chat/completions", json=CHAT,
                                  headers=headers)).status == 502
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "no_available_target"
    routes = await (await client.get("/api/routes", headers=headers)).json()
    assert routes[0]["target_state"][0]["breaker"] == "open"


async def test_slow_upstream_times_out_with_504(appliance: Any) -> None:
    up = await _upstream()
    up.app[STATE].update(mode="slow", delay=3.0)
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1"))),
                                     first_byte_timeout_s=0.3, retries=0))
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_upstream_dying_midstream_ends_stream_with_error_event(appliance: Any) -> None:
    up = await _upstream(reply="one two three four five")
    up.app[STATE]["mode"] = "die_midstream"
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True},
                             headers=headers)
    assert resp.status == 200
    events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "upstream_error"
    assert "broke off the stream" in error["message"]


async def test_client_disconnect_cancels_upstream_request(appliance: Any) -> None:
    up = await _upstream(reply=" ".join(["w"] * 200))
    up.app[STATE]["chunk_delay"] = 0.02
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    async with aiohttp.ClientSession() as s:
        resp = await s.post(client.make_url("/v1/chat/completions"),
                            json={**CHAT, "stream": True}, headers=headers)
        await resp.content.readline()
        resp.close()  # the client goes away mid-stream
    for _ in range(100):
        if up.app[STATE]["cancelled"]:
            break
        await asyncio.sleep(0.05)
    assert up.app[STATE]["cancelled"] == 1
    assert up.app[STATE]["completed_streams"] == 0
    services = client.server.app[_services_key()]
    assert all(t.in_flight == 0 for t in services.router.all_targets())


async def test_anthropic_upstream_both_ways(appliance: Any) -> None:
    fake = await start_app(make_anthropic_app(reply="Bonjour de Claude"))
    cfg = {"upstreams": [{"name": "claude", "kind": "anthropic", "api_key": FAKE_API_KEY,
                          "base_url": str(fake.make_url("/v1"))}],
           "routes": [{"model": "claude", "targets": ["claude:claude-3-5-haiku-latest"]}]}
    client = await appliance(cfg)
    headers = await _key(client)
    body = {"model": "claude", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Salut"}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    chat = await resp.json()
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["content"] == "Bonjour de Claude"
    assert chat["usage"]["completion_tokens"] > 0
    resp = await client.post("/v1/chat/completions", json={**body, "stream": True},
                             headers=headers)
    events = await read_sse(resp)
    assert events[-1] == b"[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                   for e in events[:-1] if json.loads(e)["choices"])
    assert text == "Bonjour de Claude"


async def test_responses_api(appliance: Any) -> None:
    up = await _upstream(reply="It is sunny")
    client = await appliance(_config(("gpu-a", str(up.make_url("/v1")))))
    headers = await _key(client)
    body = {"model": "llama-3-8b", "input": "Weather?", "instructions": "Be terse."}
    resp = await client.post("/v1/responses", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    out = await resp.json()
    assert out["object"] == "response" and out["status"] == "completed"
    assert out["output"][0]["content"][0]["text"] == "It is sunny"
    assert out["usage"]["input_tokens"] == 7
    sent = up.app[STATE]["requests"][0]["body"]["messages"]
    assert sent[0] == {"role": "system", "content": "Be terse."}
    resp = await client.post("/v1/responses", json={**body, "stream": True}, headers=headers)
    raw = await resp.read()
    kinds = [line[7:] for line in raw.decode().split("\n") if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [json.loads(line[6:])["delta"] for line in raw.decode().split("\n")
              if line.startswith("data: ") and "output_text.delta" in line]
    assert "".join(deltas) == "It is sunny"


async def test_audio_and_images_pass_through(appliance: Any) -> None:
    up = await _upstream()
    cfg = _config(("gpu-a", str(up.make_url("/v1"))),
                  route={"model": "whisper-1", "targets": ["gpu-a"]})
    client = await appliance(cfg)
    headers = await _key(client)
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", b"RIFF....WAVE", filename="a.wav", content_type="audio/wav")
    resp = await client.post("/v1/audio/transcriptions", data=form, headers=headers)
    assert resp.status == 200, await resp.text()
    seen = up.app[STATE]["requests"][0]
    assert seen["path"] == "/v1/audio/transcriptions"
    assert seen["content_type"].startswith("multipart/form-data")
    assert b"RIFF....WAVE" in seen["raw"]


async def test_routes_api_changes_apply_without_restart(appliance: Any) -> None:
    up = await _upstream(reply="new route")
    client = await appliance({})
    headers = await _key(client, role="admin")
    resp = await client.post("/api/upstreams", headers=headers, json={
        "name": "gpu-z", "base_url": str(up.make_url("/v1"))})
    assert resp.status == 201, await resp.text()
    resp = await client.post("/api/routes", headers=headers,
                             json={"model": "m1", "targets": ["gpu-z"]})
    assert resp.status == 201
    resp = await client.post("/v1/chat/completions", headers=headers,
                             json={**CHAT, "model": "m1"})
    assert (await resp.json())["choices"][0]["message"]["content"] == "new route"
    resp = await client.post("/api/routes", headers=headers,
                             json={"model": "m2", "targets": ["nowhere"]})
    assert resp.status == 400
    assert "names no upstream" in (await resp.json())["error"]["message"]
    assert (await client.delete("/api/routes/m1", headers=headers)).status == 200
    resp = await client.post("/v1/chat/completions", headers=headers,
                             json={**CHAT, "model": "m1"})
    assert resp.status == 404


async def test_control_api_needs_admin_key(appliance: Any) -> None:
    client = await appliance({})
    headers = await _key(client, role="inference")
    resp = await client.get("/api/keys", headers=headers)
    assert resp.status == 403
    assert (await client.get("/api/keys")).status == 401
    spec = await (await client.get("/api/openapi.json")).json()
    assert "/api/routes" in spec["paths"] and "post" in spec["paths"]["/api/routes"]
