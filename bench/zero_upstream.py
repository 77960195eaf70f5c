"""A zero-latency OpenAI-compatible upstream for benchmarks: fixed answers, no work."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BODY = (b'{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench",'
        b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1,'
        b'"total_tokens":6}}')


async def chat(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=lambda *_: None)


if __name__ == "__main__":
    main()
