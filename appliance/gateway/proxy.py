"""Sends one client request to the targets of its route: retries, fallback, breakers, streams.

Bytes from an OpenAI-compatible target go to the client as they arrive; only targets that
speak another protocol (Anthropic) or endpoints that need a different shape (Responses) pass
through a translating transform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

from appliance.gateway import anthropic
from appliance.gateway.anthropic_errors import anthropic_error_to_openai
from appliance.gateway.anthropic_stream import StreamTranslator
from appliance.gateway.routing import RoutePlan, Target
from appliance.gateway.streams import StreamTransform, UsageTap, usage_of
from appliance.gateway.upstream_client import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from appliance.kernel.errors import (
    ApplianceError,
    BadRequest,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from appliance.settings import GatewaySettings

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode


class Call(msgspec.Struct, kw_only=True):
    """One client request as the forwarder needs it."""

    endpoint: str  # path below /v1, e.g. "chat/completions"
    model: str
    stream: bool
    body: bytes
    content_type: str
    parsed: dict[str, Any] | None = None  # JSON bodies; None for multipart
    client_wants_usage: bool = False
    headers: dict[str, str] = {}  # extra headers for the client response (rate limits)

    def json(self) -> dict[str, Any]:
        """The body as a dict, decoded on first need (most requests never need it)."""
        if self.parsed is None:
            self.parsed = msgspec.json.decode(self.body)
        return self.parsed


class Outcome(msgspec.Struct, kw_only=True):
    """What the meter records about a forwarded request."""

    route: str = ""
    target: str = ""
    status: int = 0
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None


class _Retryable(Exception):
    """A target failed before sending anything to the client; try the next one."""

    def __init__(self, error: ApplianceError, *, breaker: bool = True) -> None:
        super().__init__(error.message)
        self.error = error
        self.breaker = breaker


ResponseShaper = Callable[[bytes], bytes]
StreamFactory = Callable[[], StreamTransform]


class Forwarder:
    """Owns the upstream connection pool and the attempt loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.pool = UpstreamPool()

    def start(self) -> None:
        """Ready the keep-alive connection pool to targets."""
        self.pool = UpstreamPool()

    async def close(self) -> None:
        self.pool.close()

    async def forward(self, request: web.Request, call: Call, plan: RoutePlan, outcome: Outcome,
                      *, shape: ResponseShaper | None = None,
                      stream_shape: StreamFactory | None = None) -> web.StreamResponse:
        """Try each candidate until one answers; raise the last error if none does."""
        last: ApplianceError = Unavailable(
            f"No target for model `{call.model}` is available right now.",
            code="no_available_target")
        backoff = self.settings.retry_backoff_s
        for route_model, targets in plan.steps:
            for round_no in range(self.settings.retries + 1):
                tried = False
                for target in targets:
                    if not target.available or not target.breaker.allow():
                        continue
                    tried = True
                    outcome.route, outcome.target = route_model, target.name
                    try:
                        return await self._attempt(request, call, target, route_model, outcome,
                                                   shape=shape, stream_shape=stream_shape)
                    except _Retryable as failure:
                        last = failure.error
                        if failure.breaker:
                            target.breaker.failure()
                        log.warning("target %s failed for %s: %s", target.name, call.model,
                                    failure.error.message)
                if not tried:
                    break  # nothing usable in this step: go to the fallback at once
                if round_no < self.settings.retries:
                    await asyncio.sleep(backoff * (2**round_no))
        raise last

    def _request_body(self, call: Call, target: Target,
                      route_model: str) -> tuple[bytes, str, str]:
        """Body, URL suffix and content type for this target (original bytes when possible)."""
        if target.kind == "anthropic":
            if call.endpoint != "chat/completions":
                raise _Retryable(BadRequest(
                    f"target {target.name} (Anthropic) only serves chat completions"),
                    breaker=False)
            body = anthropic.chat_request_to_messages(
                call.json(), upstream_model=target.upstream_model or route_model)
            return _encode(body), "/messages", "application/json"
        if not call.content_type.startswith("application/json"):
            return call.body, "/" + call.endpoint, call.content_type
        rewrite: dict[str, Any] = {}
        # Local engines serve one model and ignore the name; upstreams need theirs.
        wanted = target.upstream_model or (None if target.upstream is None else route_model)
        if wanted and wanted != call.model:
            rewrite["model"] = wanted
        if call.stream and not call.client_wants_usage:
            options = dict(call.json().get("stream_options") or {})
            options["include_usage"] = True
            rewrite["stream_options"] = options
        if not rewrite:
            return call.body, "/" + call.endpoint, call.content_type
        return _encode({**call.json(), **rewrite}), "/" + call.endpoint, "application/json"

    @staticmethod
    def _headers(target: Target, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type}
        key = target.api_key
        if target.kind == "anthropic":
            headers["anthropic-version"] = anthropic.ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def _attempt(self, request: web.Request, call: Call, target: Target,
                       route_model: str, outcome: Outcome, *, shape: ResponseShaper | None,
                       stream_shape: StreamFactory | None) -> web.StreamResponse:
        body, suffix, content_type = self._request_body(call, target, route_model)
        base = target.base_url
        if base is None:
            raise _Retryable(Unavailable(f"target {target.name} is not available"),
                             breaker=False)
        started = time.monotonic()
        target.in_flight += 1
        try:
            url, head = target.request_head(suffix, content_type, self._headers)
            try:
                # first_byte_s bounds the wait for the headers and every gap between streamed
                # chunks; total_s bounds the whole exchange.
                upstream = await self.pool.request(
                    url, head, body, connect_s=target.connect_s,
                    first_byte_s=target.first_byte_s, gap_s=target.first_byte_s,
                    total_s=target.total_s)
            except UpstreamTimeoutError as exc:
                raise _Retryable(UpstreamTimeout(f"target {target.name}: {exc}")) from None
            except (UpstreamConnectError, UpstreamProtocolError) as exc:
                raise _Retryable(UpstreamError(
                    f"cannot reach target {target.name}: {exc}")) from None
            try:
                return await self._relay(request, call, target, upstream, outcome, started,
                                         shape=shape, stream_shape=stream_shape)
            finally:
                upstream.close()
        finally:
            target.in_flight -= 1

    async def _relay(self, request: web.Request, call: Call, target: Target,
                     upstream: UpstreamResponse, outcome: Outcome, started: float, *,
                     shape: ResponseShaper | None,
                     stream_shape: StreamFactory | None) -> web.StreamResponse:
        status = upstream.status
        if status >= 500 or status == 429:
            detail = await self._read_error(upstream)
            # 529 is Anthropic's "overloaded"
            error = Unavailable if status in (503, 529) else UpstreamError
            raise _Retryable(error(f"target {target.name} answered {status}: {detail}"),
                             breaker=status != 429)
        if status >= 400:
            # The client's own mistake: hand it back as the target phrased it.
            payload = await upstream.read()
            target.breaker.success()
            if target.kind == "anthropic":
                status, envelope = anthropic_error_to_openai(status, payload)
                payload = _encode(envelope)
            outcome.status, outcome.error = status, "upstream_client_error"
            return web.Response(status=status, body=payload, content_type="application/json",
                                headers=call.headers)
        is_stream = call.stream and "text/event-stream" in upstream.headers.get(
            "content-type", "")
        if not is_stream:
            try:
                payload = await upstream.read()
            except UpstreamTimeoutError as exc:
                raise _Retryable(UpstreamTimeout(f"target {target.name}: {exc}")) from None
            except UpstreamProtocolError as exc:
                raise _Retryable(UpstreamError(
                    f"target {target.name} broke off its response: {exc}")) from None
            target.breaker.success()
            if target.kind == "anthropic":
                try:
                    payload = _encode(anthropic.messages_response_to_chat(
                        msgspec.json.decode(payload), model=call.model, created=int(time.time())))
                except (msgspec.DecodeError, ApplianceError) as exc:
                    raise _Retryable(UpstreamError(
                        f"target {target.name} sent an unreadable response: {exc}")) from None
            outcome.prompt_tokens, outcome.completion_tokens = usage_of(payload)
            if shape is not None:
                payload = shape(payload)
            outcome.status = 200
            return web.Response(body=payload, content_type="application/json",
                                headers=call.headers)
        return await self._relay_stream(request, call, target, upstream, outcome, started,
                                        stream_shape)

    async def _relay_stream(self, request: web.Request, call: Call, target: Target,
                            upstream: UpstreamResponse, outcome: Outcome, started: float,
                            stream_shape: StreamFactory | None
                            ) -> web.StreamResponse:
        transforms: list[StreamTransform] = []
        if target.kind == "anthropic":
            transforms.append(StreamTranslator(
                model=call.model, created=int(time.time()),
                include_usage=call.client_wants_usage or stream_shape is not None))
        else:
            transforms.append(UsageTap(strip_usage=not call.client_wants_usage
                                       and stream_shape is None))
        if stream_shape is not None:
            transforms.append(stream_shape())
        response = web.StreamResponse(status=200, headers={
            **call.headers, "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        target.breaker.success()
        outcome.status = 200
        ttft_seen = False
        try:
            async for data in upstream.iter():
                for transform in transforms:
                    data = transform.feed(data)
                if data:
                    if not ttft_seen:
                        outcome.ttft_ms = (time.monotonic() - started) * 1000
                        ttft_seen = True
                    await response.write(data)
            tail = b""
            for transform in transforms:
                tail = transform.feed(tail) + transform.finish()
            if tail:
                await response.write(tail)
        except UpstreamTimeoutError as exc:
            outcome.status, outcome.error = 504, "stream_timeout"
            await _write_stream_error(response, UpstreamTimeout(
                f"target {target.name} stalled mid-stream: {exc}"))
        except UpstreamProtocolError as exc:
            outcome.status, outcome.error = 502, "upstream_broke_stream"
            target.breaker.failure()
            await _write_stream_error(response, UpstreamError(
                f"target {target.name} broke off the stream: {exc}"))
        except (ConnectionResetError, asyncio.CancelledError):
            outcome.status, outcome.error = 499, "client_disconnected"
            raise
        outcome.prompt_tokens, outcome.completion_tokens = transforms[0].usage
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    @staticmethod
    async def _read_error(upstream: UpstreamResponse) -> str:
        try:
            deadline = asyncio.get_running_loop().time() + 5
            text = (await upstream.read(deadline))[:300].decode(errors="replace")
        except (UpstreamTimeoutError, UpstreamProtocolError):
            text = ""
        try:
            message = msgspec.json.decode(text)["error"]["message"]
            return str(message)
        except Exception:
            return text.strip() or f"HTTP {upstream.status}"


async def _write_stream_error(response: web.StreamResponse, error: ApplianceError) -> None:
    """End a started stream the way OpenAI does: an error event, then [DONE]."""
    event = {"error": {"message": error.message, "type": error.type, "param": None,
                       "code": error.code}}
    with contextlib.suppress(ConnectionResetError):
        await response.write(b"data: " + _encode(event) + b"\n\ndata: [DONE]\n\n")
