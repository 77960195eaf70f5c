"""A local server speaking OpenAI's API, with switchable faults, for gateway tests."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

STATE = web.AppKey("fake_state", dict)


def make_openai_app(*, reply: str = "Hello from upstream", name: str = "fake") -> web.Application:
    """Behaviour is driven by ``app[STATE]``: mode ∈ ok | fail500 | slow | die_midstream."""
    app = web.Application()
    state: dict[str, Any] = {"mode": "ok", "delay": 0.0, "requests": [], "cancelled": 0,
                             "completed_streams": 0, "reply": reply, "name": name,
                             "chunk_delay": 0.0}
    app[STATE] = state

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state["requests"].append({"path": request.path, "body": body,
                                  "headers": dict(request.headers)})
        mode = state["mode"]
        if mode == "fail500":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}},
                                     status=500)
        if mode == "slow":
            await asyncio.sleep(state["delay"])
        words = state["reply"].split(" ")
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": created,
                "model": body["model"], "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": state["reply"]}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words),
                          "total_tokens": 7 + len(words)}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, word in enumerate(words):
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": created, "model": body["model"], "choices": [{
                             "index": 0, "delta": {"content": (" " if i else "") + word},
                             "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if mode == "die_midstream" and i == 1:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if state["chunk_delay"]:
                    await asyncio.sleep(state["chunk_delay"])
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                         "created": created, "model": body["model"], "choices": [],
                         "usage": {"prompt_tokens": 7, "completion_tokens": len(words),
                                   "total_tokens": 7 + len(words)}}
                await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            state["completed_streams"] += 1
        except (ConnectionResetError, asyncio.CancelledError):
            state["cancelled"] += 1
            raise
        return resp

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        state["requests"].append({"path": request.path, "body": body})
        return web.json_response({"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3}})

    async def raw(request: web.Request) -> web.Response:
        data = await request.read()
        state["requests"].append({"path": request.path, "raw": data,
                                  "content_type": request.headers.get("Content-Type")})
        return web.json_response({"text": "transcribed", "bytes": len(data)})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/audio/transcriptions", raw)
    app.router.add_post("/v1/images/generations", raw)
    return app
