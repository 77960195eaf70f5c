"""The engine worker: a child process serving one model over a small OpenAI-compatible HTTP API.

Run as ``appliance engine ...`` by the supervisor (the same executable, frozen or not), so a
crash in native code never takes the gateway down. It prints one JSON line
``{"event": "ready", "port": N}`` on stdout once it listens.

All model calls run on one dedicated thread (llama.cpp contexts are not thread-safe); requests
wait in a bounded queue and get 503 when it is full.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)

TOKEN_ENV = "APPLIANCE_ENGINE_TOKEN"
# OpenAI request fields passed through to llama.cpp; anything else is ignored.
CHAT_FIELDS = (
    "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
    "response_format", "tools", "tool_choice", "logit_bias", "logprobs", "top_logprobs",
)
COMPLETION_FIELDS = (
    "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
    "logit_bias", "echo", "suffix",
)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class EngineBusy(Exception):
    """The request queue is full."""


def _error(status: int, message: str, *, code: str, type_: str = "invalid_request_error",
           headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=_encode(body), content_type="application/json",
                        headers=headers)


class ModelRunner:
    """Owns the loaded model and the one thread that runs it."""

    def __init__(self, *, name: str, task: str, files: dict[str, Path], threads: int,
                 context_tokens: int, max_queue: int) -> None:
        self.name = name
        self.task = task
        self.files = files
        self.threads = threads
        self.context_tokens = context_tokens
        self.max_queue = max_queue
        self.waiting = 0
        self.loaded_at = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._llm: Any = None
        self._embedder: Any = None

    def load(self) -> None:
        """Load the model (blocking; called before the server starts)."""
        if self.task == "chat":
            from llama_cpp import Llama

            path = next(iter(self.files.values()))
            self._llm = Llama(
                model_path=str(path), n_ctx=self.context_tokens, n_threads=self.threads,
                n_threads_batch=self.threads, verbose=False,
            )
        elif self.task == "embedding":
            from appliance.engines.bert import SentenceEmbedder

            self._embedder = SentenceEmbedder.load(self.files)
        else:
            raise ValueError(f"unknown task {self.task!r}")
        self.loaded_at = time.time()

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread after the requests queued before it."""
        if self.waiting >= self.max_queue:
            raise EngineBusy
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            self.waiting -= 1

    # --- model calls (model thread) -------------------------------------------------------

    def chat(self, body: dict[str, Any], *, stream: bool) -> Any:
        kwargs = {k: body[k] for k in CHAT_FIELDS if k in body}
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        return self._llm.create_chat_completion(
            messages=body["messages"], max_tokens=max_tokens, stream=stream, model=self.name,
            **kwargs,
        )

    def complete(self, body: dict[str, Any], *, stream: bool) -> Any:
        kwargs = {k: body[k] for k in COMPLETION_FIELDS if k in body}
        prompt = body["prompt"]
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ValueError("this engine takes one prompt per request")
            prompt = prompt[0]
        return self._llm.create_completion(
            prompt=prompt, max_tokens=body.get("max_tokens", 16), stream=stream,
            model=self.name, **kwargs,
        )

    def context_used(self) -> int:
        return int(self._llm.n_tokens)

    def embed(self, texts: list[str]) -> tuple[Any, list[int]]:
        vectors, counts = self._embedder.embed(texts)
        return vectors, list(counts)


def _drain_stream(chunks: Iterator[dict[str, Any]], loop: asyncio.AbstractEventLoop,
                  out: asyncio.Queue[Any], stop: threading.Event) -> int:
    """Model thread: pull chunks until done or cancelled; return completion chunks seen."""
    produced = 0
    try:
        for chunk in chunks:
            if stop.is_set():
                break
            produced += 1
            loop.call_soon_threadsafe(out.put_nowait, chunk)
    except Exception as exc:  # surfaced to the client as an error event
        loop.call_soon_threadsafe(out.put_nowait, exc)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # stops generation when the client went away
        loop.call_soon_threadsafe(out.put_nowait, None)
    return produced


class EngineApp:
    """HTTP views of the worker."""

    def __init__(self, runner: ModelRunner, token: str) -> None:
        self.runner = runner
        self.token = token.encode()

    def build(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._auth])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(given, self.token):
                return _error(401, "engine token missing or wrong", code="invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "status": "ok", "model": self.runner.name, "task": self.runner.task,
            "waiting": self.runner.waiting, "pid": os.getpid(),
        })

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.runner.name, "object": "model", "created": int(self.runner.loaded_at),
            "owned_by": "appliance",
        }]})

    async def _body(self, request: web.Request, required: str) -> dict[str, Any] | web.Response:
        try:
            body = _decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(400, f"request body is not valid JSON: {exc}", code="invalid_json")
        if not isinstance(body, dict) or required not in body:
            return _error(400, f"missing required field {required!r}", code="invalid_request")
        return body

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        if self.runner.task != "chat":
            return _error(400, f"model {self.runner.name} does not do chat", code="unsupported")
        body = await self._body(request, "messages")
        if isinstance(body, web.Response):
            return body
        return await self._generate(request, body, self.runner.chat)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        if self.runner.task != "chat":
            return _error(400, f"model {self.runner.name} does not do completions",
                          code="unsupported")
        body = await self._body(request, "prompt")
        if isinstance(body, web.Response):
            return body
        return await self._generate(request, body, self.runner.complete)

    async def _generate(self, request: web.Request, body: dict[str, Any],
                        call: Callable[..., Any]) -> web.StreamResponse:
        stream = bool(body.get("stream"))
        try:
            if not stream:
                result = await self.runner.run(lambda: call(body, stream=False))
                return web.Response(body=_encode(result), content_type="application/json")
            chunks = await self.runner.run(lambda: call(body, stream=True))
        except EngineBusy:
            return _error(503, "the engine's request queue is full; retry shortly",
                          code="engine_overloaded", type_="server_error",
                          headers={"Retry-After": "1"})
        except ValueError as exc:  # e.g. prompt longer than the context window
            return _error(400, str(exc), code="invalid_request")
        return await self._stream(request, body, chunks)

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      chunks: Iterator[dict[str, Any]]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        work = self.runner.run(lambda: _drain_stream(chunks, loop, out, stop))
        work_task = asyncio.ensure_future(work)
        last: dict[str, Any] | None = None
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    err = {"error": {"message": str(item), "type": "server_error",
                                     "param": None, "code": "engine_error"}}
                    await response.write(b"data: " + _encode(err) + b"\n\n")
                    break
                last = item
                await response.write(b"data: " + _encode(item) + b"\n\n")
            completion_tokens = await work_task
            if include_usage and last is not None:
                total = await self.runner.run(self.runner.context_used)
                prompt_tokens = max(0, total - completion_tokens)
                usage_chunk: dict[str, Any] = {
                    "id": last.get("id"), "object": last.get("object"),
                    "created": last.get("created"), "model": self.runner.name, "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }
                await response.write(b"data: " + _encode(usage_chunk) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
        finally:
            stop.set()  # client gone or done: the model thread stops generating
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        if self.runner.task != "embedding":
            return _error(400, f"model {self.runner.name} does not produce embeddings",
                          code="unsupported")
        body = await self._body(request, "input")
        if isinstance(body, web.Response):
            return body
        texts = body["input"]
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return _error(400, "input must be a string or a non-empty list of strings",
                          code="invalid_request")
        try:
            vectors, counts = await self.runner.run(lambda: self.runner.embed(texts))
        except EngineBusy:
            return _error(503, "the engine's request queue is full; retry shortly",
                          code="engine_overloaded", type_="server_error",
                          headers={"Retry-After": "1"})
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, vec in enumerate(vectors):
            if as_base64:
                import base64

                emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode()
            else:
                emb = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(counts)
        return web.Response(body=_encode({
            "object": "list", "data": data, "model": self.runner.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }), content_type="application/json")


def default_threads() -> int:
    """Half the cores, at least one: leaves a core for the gateway."""
    return max(1, (os.cpu_count() or 2) // 2)


def serve_engine(*, name: str, task: str, files: dict[str, Path], host: str, port: int,
                 threads: int, context_tokens: int, max_queue: int) -> int:
    """Load the model, listen, announce the port on stdout, serve until SIGTERM."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"engine[{name}] %(levelname)s %(message)s")
    runner = ModelRunner(name=name, task=task, files=files, threads=threads or default_threads(),
                         context_tokens=context_tokens, max_queue=max_queue)
    try:
        runner.load()
    except Exception as exc:
        print(_encode({"event": "failed", "error": f"{type(exc).__name__}: {exc}"}).decode(),
              flush=True)
        return 1
    app = EngineApp(runner, os.environ.get(TOKEN_ENV, "")).build()

    async def main() -> None:
        web_runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await web_runner.setup()
        site = web.TCPSite(web_runner, host, port)
        await site.start()
        bound = web_runner.addresses[0][1]
        print(_encode({"event": "ready", "port": bound, "pid": os.getpid(),
                       "id": uuid.uuid4().hex}).decode(), flush=True)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        await web_runner.cleanup()

    try:
        import uvloop

        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    return 0
