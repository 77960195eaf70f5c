"""The Responses API (text) on top of chat completions: request, response and stream shapes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

from appliance.kernel.errors import BadRequest

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in (
                    "input_text", "output_text", "text"):
                raise BadRequest(f"{where}: only text content is supported", param="input")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise BadRequest(f"{where}: content must be a string or a list of text parts",
                     param="input")


def to_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request → the equivalent chat completions request."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    given = body["input"]
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        for i, item in enumerate(given):
            kind = item.get("type", "message")
            if kind != "message":
                raise BadRequest(f"input[{i}]: item type {kind!r} is not supported",
                                 param="input")
            role = item.get("role", "user")
            if role == "developer":
                role = "system"
            messages.append({"role": role, "content": _text_of(item.get("content"),
                                                                 f"input[{i}]")})
    chat: dict[str, Any] = {"model": body["model"], "messages": messages,
                            "stream": bool(body.get("stream"))}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if chat["stream"]:
        chat["stream_options"] = {"include_usage": True}
    return chat


def _response_object(*, resp_id: str, model: str, created: int, text: str, status: str,
                     usage: tuple[int, int] | None, msg_id: str) -> dict[str, Any]:
    output = [{
        "type": "message", "id": msg_id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }] if status == "completed" or text else []
    obj: dict[str, Any] = {
        "id": resp_id, "object": "response", "created_at": created, "status": status,
        "model": model, "output": output, "error": None, "incomplete_details": None,
    }
    if usage is not None:
        obj["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1],
                        "total_tokens": usage[0] + usage[1]}
    return obj


def chat_response_to_response(payload: bytes) -> bytes:
    """A chat.completion body → a Responses ``response`` object body."""
    chat = _decode(payload)
    choice = (chat.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = chat.get("usage") or {}
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    obj = _response_object(
        resp_id="resp_" + str(chat.get("id", uuid.uuid4().hex)).removeprefix("chatcmpl-"),
        model=chat.get("model", ""), created=int(chat.get("created", time.time())), text=text,
        status="completed" if status == "completed" else "incomplete",
        usage=(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        msg_id="msg_" + uuid.uuid4().hex[:24])
    if status == "incomplete":
        obj["incomplete_details"] = {"reason": "max_output_tokens"}
        obj["output"][0]["status"] = "incomplete" if obj["output"] else None
    return _encode(obj)


class ResponsesStream:
    """Chat completion chunks (SSE) in → Responses events (SSE) out."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.resp_id = "resp_" + uuid.uuid4().hex
        self.msg_id = "msg_" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text: list[str] = []
        self.seq = 0
        self.started = False
        self.done = False
        self._buf = b""
        self._usage = (0, 0)

    @property
    def usage(self) -> tuple[int, int]:
        return self._usage

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"

    def _start(self) -> bytes:
        self.started = True
        base = _response_object(resp_id=self.resp_id, model=self.model, created=self.created,
                                text="", status="in_progress", usage=None, msg_id=self.msg_id)
        item = {"type": "message", "id": self.msg_id, "status": "in_progress",
                "role": "assistant", "content": []}
        return (self._event("response.created", response=base)
                + self._event("response.in_progress", response=base)
                + self._event("response.output_item.added", output_index=0, item=item)
                + self._event("response.content_part.added", item_id=self.msg_id,
                              output_index=0, content_index=0,
                              part={"type": "output_text", "text": "", "annotations": []}))

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = b"" if self.started else self._start()
        *events, self._buf = self._buf.split(b"\n\n")
        for event in events:
            payload = event.partition(b"data:")[2].strip()
            if not payload:
                continue
            if payload == b"[DONE]":
                out += self._complete()
                continue
            try:
                chunk = _decode(payload)
            except msgspec.DecodeError:
                continue
            if "error" in chunk:
                self.done = True
                out += self._event("error", code=chunk["error"].get("code"),
                                   message=chunk["error"].get("message"), param=None)
                continue
            if chunk.get("usage"):
                u = chunk["usage"]
                self._usage = (u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
            for choice in chunk.get("choices") or []:
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    self.text.append(delta)
                    out += self._event("response.output_text.delta", item_id=self.msg_id,
                                       output_index=0, content_index=0, delta=delta)
        return out

    def _complete(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": self.msg_id, "status": "completed",
                "role": "assistant", "content": [part]}
        final = _response_object(resp_id=self.resp_id, model=self.model, created=self.created,
                                 text=text, status="completed", usage=self._usage,
                                 msg_id=self.msg_id)
        return (self._event("response.output_text.done", item_id=self.msg_id, output_index=0,
                            content_index=0, text=text)
                + self._event("response.content_part.done", item_id=self.msg_id,
                              output_index=0, content_index=0, part=part)
                + self._event("response.output_item.done", output_index=0, item=item)
                + self._event("response.completed", response=final))

    def finish(self) -> bytes:
        rest, self._buf = self._buf, b""
        out = self.feed(rest + b"\n\n") if rest.strip() else b""
        return out
