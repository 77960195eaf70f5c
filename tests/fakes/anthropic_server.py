"""A local stand-in for Anthropic's Messages API, for tests that must not leave loopback.

It speaks the wire protocol the gateway relies on: ``POST /v1/messages`` with the
``x-api-key`` and ``anthropic-version`` headers, errors as
``{"type": "error", "error": {"type", "message"}}``, and streaming as the real event sequence
(``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``…,
``content_block_stop``, ``message_delta``, ``message_stop``). Tokens are whitespace-separated
words, so ``max_tokens`` and usage figures are predictable.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

__all__ = [
    "FAKE_API_KEY",
    "REQUESTS",
    "ReceivedRequest",
    "make_anthropic_app",
]

FAKE_API_KEY: Final = "sk-ant-fake-key"
SUPPORTED_VERSIONS: Final = frozenset({"2023-06-01"})


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the fake received it: lower-cased headers and the decoded JSON body."""

    headers: dict[str, str]
    body: Any


REQUESTS: Final = web.AppKey("requests", list[ReceivedRequest])

_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ROLES: Final = frozenset({"user", "assistant"})
_BLOCK_TYPES: Final = frozenset({"text", "image", "tool_use", "tool_result", "document"})
_WORD: Final = re.compile(r"\S+\s*")
_DELTAS: Final = 3

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder()


class _Invalid(Exception):
    """A request body Anthropic would refuse with 400 invalid_request_error."""


def make_anthropic_app(
    *,
    reply: str = "Hello from Claude",
    fail_status: int | None = None,
    api_key: str = FAKE_API_KEY,
) -> web.Application:
    """Build the fake: it answers every valid request with ``reply``, or with ``fail_status``."""
    app = web.Application()
    app[REQUESTS] = []
    ids = itertools.count(1)

    async def create_message(request: web.Request) -> web.StreamResponse:
        number = next(ids)
        request_id = f"req_fake{number:06d}"
        raw = await request.read()
        try:
            body: Any = _decoder.decode(raw)
        except msgspec.DecodeError:
            body = None
        app[REQUESTS].append(
            ReceivedRequest(headers={k.lower(): v for k, v in request.headers.items()}, body=body)
        )

        key = request.headers.get("x-api-key")
        if not key:
            return _error(401, "x-api-key header is required", request_id)
        if key != api_key:
            return _error(401, "invalid x-api-key", request_id)
        version = request.headers.get("anthropic-version")
        if not version:
            return _error(400, "anthropic-version: header is required", request_id)
        if version not in SUPPORTED_VERSIONS:
            return _error(400, f"anthropic-version: invalid version {version!r}", request_id)
        if fail_status is not None:
            return _error(fail_status, _failure_message(fail_status), request_id)
        try:
            _validate(body)
        except _Invalid as exc:
            return _error(400, str(exc), request_id)

        message = _message(body, reply, message_id=f"msg_fake{number:06d}")
        if body.get("stream"):
            return await _stream(request, message, request_id)
        return web.Response(
            body=_encoder.encode(message),
            content_type="application/json",
            headers={"request-id": request_id},
        )

    app.router.add_post("/v1/messages", create_message)
    return app


def _failure_message(status: int) -> str:
    return {
        429: "Number of request tokens has exceeded your per-minute rate limit",
        529: "Overloaded",
    }.get(status, f"fake failure with HTTP {status}")


def _error(status: int, message: str, request_id: str) -> web.Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return web.Response(
        status=status,
        body=_encoder.encode(body),
        content_type="application/json",
        headers={"request-id": request_id},
    )


def _validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise _Invalid("request body must be a JSON object")
    for field in ("model", "max_tokens", "messages"):
        if field not in body:
            raise _Invalid(f"{field}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _Invalid("model: Input should be a non-empty string")
    max_tokens = body["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _Invalid("max_tokens: Input should be a positive integer")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            if not content and i != len(messages) - 1:
                raise _Invalid(f"messages.{i}: all messages must have non-empty content")
            continue
        if not isinstance(content, list) or not content:
            raise _Invalid(f"messages.{i}.content: Input should be a string or non-empty list")
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") not in _BLOCK_TYPES:
                raise _Invalid(f"messages.{i}.content.{j}.type: unknown content block type")
            if block["type"] == "text" and not block.get("text"):
                raise _Invalid(f"messages.{i}.content.{j}: text content blocks must be non-empty")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _Invalid("system: Input should be a string or a list of text blocks")
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise _Invalid("temperature: Input should be less than or equal to 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) for s in stops)
    ):
        raise _Invalid("stop_sequences: Input should be a list of strings")
    if body.get("tool_choice") is not None and not body.get("tools"):
        raise _Invalid("tool_choice may only be specified while providing tools")


def _words(content: Any) -> int:
    """Count the words of a system prompt or message content: a string or a list of blocks."""
    if isinstance(content, str):
        return len(content.split())
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if isinstance(block, dict):
            total += _words(block.get("text")) + _words(block.get("content"))
    return total


def _message(body: dict[str, Any], reply: str, *, message_id: str) -> dict[str, Any]:
    text = reply
    stop_reason = "end_turn"
    stop_sequence: str | None = None
    hits = [(text.find(s), s) for s in body.get("stop_sequences") or [] if s in text]
    if hits:
        position, stop_sequence = min(hits)
        text, stop_reason = text[:position], "stop_sequence"
    words = _WORD.findall(text)
    if len(words) > body["max_tokens"]:
        text, stop_reason, stop_sequence = "".join(words[: body["max_tokens"]]), "max_tokens", None
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            "input_tokens": _words(body.get("system"))
            + sum(_words(m["content"]) for m in body["messages"]),
            "output_tokens": len(text.split()),
        },
    }


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


async def _stream(
    request: web.Request, message: dict[str, Any], request_id: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "request-id": request_id,
        }
    )
    await response.prepare(request)
    text: str = message["content"][0]["text"]
    usage = message["usage"]
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 1},
    }
    await response.write(_event("message_start", {"type": "message_start", "message": start}))
    await response.write(
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    await response.write(_event("ping", {"type": "ping"}))
    words = _WORD.findall(text)
    size = max(1, -(-len(words) // _DELTAS))
    for first in range(0, len(words), size):
        delta = {"type": "text_delta", "text": "".join(words[first : first + size])}
        await response.write(
            _event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
    await response.write(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    await response.write(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": message["stop_sequence"],
                },
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    await response.write(_event("message_stop", {"type": "message_stop"}))
    await response.write_eof()
    return response
