"""Anthropic Messages streaming events → OpenAI chat completion chunks, incrementally."""

from __future__ import annotations

from typing import Any

import msgspec

from appliance.gateway.anthropic import (
    DONE_EVENT,
    MAX_EVENT_LINE,
    completion_id,
    json_decoder,
    json_encoder,
    map_finish_reason,
    token_counts,
    usage_object,
)
from appliance.gateway.anthropic_errors import openai_error_body

__all__ = ["StreamTranslator"]


class StreamTranslator:
    """Turn Anthropic's server-sent events into OpenAI ``chat.completion.chunk`` events.

    Feed it the upstream bytes as they arrive, split anywhere; it keeps the partial line and
    answers with whole OpenAI SSE events. It ends the stream with ``data: [DONE]`` exactly once:
    after ``message_stop``, after an upstream ``error`` event, on a malformed event, or from
    `finish` when the upstream stopped early.
    """

    def __init__(self, *, model: str, created: int, include_usage: bool) -> None:
        self._model = model
        self._created = created
        self._include_usage = include_usage
        self._pending = b""
        self._data: list[bytes] = []
        self._event = b""
        self._id: str | None = None
        self._tokens = (0, 0, 0)
        self._stop_reason: str | None = None
        # Anthropic content block index -> OpenAI tool call index, and whether any argument
        # bytes arrived for it (a tool without arguments must still read as "{}").
        self._tools: dict[int, int] = {}
        self._tool_has_args: dict[int, bool] = {}
        self._done = False

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) reported by the upstream so far."""
        return self._tokens[0], self._tokens[2]

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish reason once the upstream reported its stop reason."""
        return None if self._stop_reason is None else map_finish_reason(self._stop_reason)

    @property
    def done(self) -> bool:
        """Whether ``data: [DONE]`` has been emitted."""
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Consume upstream bytes; return the OpenAI SSE bytes they complete."""
        if self._done:
            return b""
        data = self._pending + data
        # A trailing CR may be the first half of a CRLF that the next read completes.
        held = b""
        if data.endswith(b"\r"):
            data, held = data[:-1], b"\r"
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = lines.pop() + held
        out: list[bytes] = []
        for line in lines:
            out.append(self._line(line))
            if self._done:
                return b"".join(out)
        if len(self._pending) > MAX_EVENT_LINE:
            self._pending = b""
            out.append(self._fail("api_error", "Anthropic sent an event line over 16 MiB"))
        return b"".join(out)

    def finish(self) -> bytes:
        """Call at upstream EOF; closes the stream with an error if it ended early."""
        if self._done:
            return b""
        # Be lenient with a last event that lacks its blank line.
        pending, self._pending = self._pending.rstrip(b"\r"), b""
        out = self._line(pending) if pending else b""
        if not self._done and self._data:
            out += self._line(b"")
        if self._done:
            return out
        return out + self._fail(
            "api_error", "the Anthropic stream ended before the message was complete"
        )

    def _line(self, line: bytes) -> bytes:
        if not line:
            if not self._data:
                self._event = b""
                return b""
            payload = b"\n".join(self._data)
            event, self._event, self._data = self._event, b"", []
            return self._dispatch(event, payload)
        if line.startswith(b":"):
            return b""  # comment / keep-alive
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        return b""

    def _dispatch(self, event_name: bytes, payload: bytes) -> bytes:
        try:
            event = json_decoder.decode(payload)
        except msgspec.DecodeError:
            return self._fail("api_error", "Anthropic sent an event that is not valid JSON")
        if not isinstance(event, dict):
            return self._fail("api_error", "Anthropic sent an event that is not a JSON object")
        kind = event.get("type")
        if not isinstance(kind, str):
            kind = event_name.decode("utf-8", "replace")
        try:
            return self._handle(kind, event)
        except (KeyError, TypeError, AttributeError, ValueError):
            return self._fail("api_error", f"Anthropic sent a malformed {kind!r} event")

    def _handle(self, kind: str, event: dict[str, Any]) -> bytes:
        if kind == "ping":
            return b""
        if kind == "error":
            error = event.get("error")
            if not isinstance(error, dict):
                error = {}
            message = error.get("message")
            if not isinstance(message, str) or not message:
                message = "the Anthropic stream failed"
            error_kind = error.get("type")
            return self._fail(error_kind if isinstance(error_kind, str) else "api_error", message)
        if kind == "message_start":
            if self._id is not None:
                raise ValueError("second message_start")
            message = event["message"]
            self._id = completion_id(message.get("id"))
            self._tokens = token_counts(message.get("usage"), self._tokens)
            return self._chunk({"role": "assistant", "content": ""})
        if self._id is None:
            if kind in (
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ):
                return self._fail("api_error", f"Anthropic sent {kind!r} before message_start")
            return b""
        if kind == "content_block_start":
            return self._block_start(int(event["index"]), event["content_block"])
        if kind == "content_block_delta":
            return self._block_delta(int(event["index"]), event["delta"])
        if kind == "content_block_stop":
            index = int(event["index"])
            if index in self._tools and not self._tool_has_args[index]:
                return self._tool_chunk(index, {"arguments": "{}"})
            return b""
        if kind == "message_delta":
            stop_reason = event.get("delta", {}).get("stop_reason")
            if isinstance(stop_reason, str):
                self._stop_reason = stop_reason
            self._tokens = token_counts(event.get("usage"), self._tokens)
            return b""
        if kind == "message_stop":
            return self._complete()
        return b""  # Anthropic may add event types; unknown ones carry nothing for us

    def _block_start(self, index: int, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        if kind == "tool_use":
            self._tools[index] = len(self._tools)
            self._tool_has_args[index] = False
            return self._tool_chunk(
                index,
                {"name": block["name"], "arguments": ""},
                call_id=block["id"],
            )
        return b""  # thinking and server-tool blocks have no chat completion counterpart

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta["text"]
            return self._chunk({"content": text}) if text else b""
        if kind == "input_json_delta" and index in self._tools:
            partial = delta["partial_json"]
            if not partial:
                return b""
            self._tool_has_args[index] = True
            return self._tool_chunk(index, {"arguments": partial})
        return b""

    def _tool_chunk(
        self, index: int, function: dict[str, Any], *, call_id: str | None = None
    ) -> bytes:
        call: dict[str, Any] = {"index": self._tools[index]}
        if call_id is not None:
            call["id"] = call_id
            call["type"] = "function"
        call["function"] = function
        return self._chunk({"tool_calls": [call]})

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self._include_usage:
            chunk["usage"] = None
        return b"data: " + json_encoder.encode(chunk) + b"\n\n"

    def _complete(self) -> bytes:
        out = self._chunk({}, map_finish_reason(self._stop_reason))
        if self._include_usage:
            usage_chunk: dict[str, Any] = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": usage_object(*self._tokens),
            }
            out += b"data: " + json_encoder.encode(usage_chunk) + b"\n\n"
        self._done = True
        return out + DONE_EVENT

    def _fail(self, kind: str, message: str) -> bytes:
        self._done = True
        error = {"error": openai_error_body(kind, message)}
        return b"data: " + json_encoder.encode(error) + b"\n\n" + DONE_EVENT
