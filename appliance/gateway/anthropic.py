"""Translation between OpenAI Chat Completions and Anthropic's Messages API.

Pure functions and one incremental stream translator: no sockets, no aiohttp, no clock. The
gateway does the I/O; this module only reshapes bodies. Where a chat request asks for something
the Messages API cannot express, `TranslationError` says so before anything is sent upstream.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from appliance.kernel.errors import BadRequest, UpstreamError

__all__ = [
    "ANTHROPIC_VERSION",
    "DEFAULT_MAX_TOKENS",
    "AnthropicProtocolError",
    "TranslationError",
    "chat_request_to_messages",
    "messages_response_to_chat",
]

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_MAX_TOKENS: Final = 4096

json_encoder: Final = msgspec.json.Encoder()
json_decoder: Final = msgspec.json.Decoder()

# Anthropic accepts exactly these image media types.
_IMAGE_MEDIA_TYPES: Final = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL: Final = re.compile(r"data:([^;,]+)((?:;[^;,]*)*?);base64,(.*)", re.DOTALL)

_FINISH_REASONS: Final[dict[str, str]] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

DONE_EVENT: Final = b"data: [DONE]\n\n"
# An SSE line longer than this is not an Anthropic event; refuse to buffer without bound.
MAX_EVENT_LINE: Final = 16 * 1024 * 1024


class TranslationError(BadRequest):
    """A chat request that the Messages API cannot express; a 400 for the client."""

    code = "unsupported_parameter"


class AnthropicProtocolError(UpstreamError, ValueError):
    """Anthropic answered with a body that is not a Messages API response; a 502."""

    code = "upstream_protocol_error"


# --------------------------------------------------------------------------- requests


def chat_request_to_messages(body: dict[str, Any], *, upstream_model: str) -> dict[str, Any]:
    """Translate an OpenAI chat completion request into an Anthropic ``/v1/messages`` body.

    Ignored because they change nothing the client can observe or have no Anthropic
    counterpart that matters here: ``model`` (replaced by ``upstream_model``), ``seed``,
    ``store``, ``metadata``, ``service_tier``, ``stream_options`` (the gateway reads
    ``include_usage`` itself), ``reasoning_effort``, ``prediction``. Parameters whose
    non-default values would change the answer and cannot be honoured raise `TranslationError`.
    """
    if not isinstance(body, dict):
        raise TranslationError("the request body must be a JSON object")
    _reject_unsupported(body)
    system, messages = _translate_messages(body.get("messages"))

    out: dict[str, Any] = {"model": upstream_model, "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = messages

    temperature = _unit_number(body, "temperature")
    if temperature is not None:
        out["temperature"] = temperature
    top_p = _unit_number(body, "top_p")
    if top_p is not None:
        out["top_p"] = top_p
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop

    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise TranslationError("`stream` must be a boolean", param="stream")
        out["stream"] = stream

    user = body.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise TranslationError("`user` must be a string", param="user")
        if user:
            out["metadata"] = {"user_id": user}

    tools = body.get("tools")
    if tools is not None:
        translated = _tools(tools)
        if translated:
            out["tools"] = translated
    choice = _tool_choice(
        body.get("tool_choice"),
        has_tools="tools" in out,
        parallel=body.get("parallel_tool_calls"),
    )
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("Anthropic models return one choice; `n` must be 1", param="n")
    if body.get("logprobs"):
        raise TranslationError("Anthropic models do not return log probabilities", param="logprobs")
    if body.get("top_logprobs"):
        raise TranslationError(
            "Anthropic models do not return log probabilities", param="top_logprobs"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name):
            raise TranslationError(f"Anthropic models do not support `{name}`", param=name)
    if body.get("logit_bias"):
        raise TranslationError("Anthropic models do not support `logit_bias`", param="logit_bias")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise TranslationError(
            "only `response_format` {'type': 'text'} can be sent to an Anthropic model",
            param="response_format",
        )
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise TranslationError("Anthropic models only answer in text", param="modalities")
    if body.get("audio") is not None:
        raise TranslationError("Anthropic models do not produce audio", param="audio")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise TranslationError(
                f"`{name}` is deprecated and not translated; use `tools`", param=name
            )


def _max_tokens(body: dict[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TranslationError(f"`{name}` must be a positive integer", param=name)
        return value
    return DEFAULT_MAX_TOKENS


def _unit_number(body: dict[str, Any], name: str) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(f"`{name}` must be a number", param=name)
    # OpenAI allows temperature up to 2; Anthropic's range is [0, 1], and silently clamping
    # would hand the client an answer sampled differently from the one it asked for.
    if not 0 <= value <= 1:
        raise TranslationError(
            f"`{name}` must be between 0 and 1 for Anthropic models, got {value}", param=name
        )
    return value


def _stop_sequences(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise TranslationError("`stop` must be a string or an array of strings", param="stop")
    return [s for s in stop if s]


def _translate_messages(raw: Any) -> tuple[list[str], list[dict[str, Any]]]:
    if not isinstance(raw, list) or not raw:
        raise TranslationError("`messages` must be a non-empty array", param="messages")
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"`{path}` must be an object", param=path)
        role = message.get("role")
        blocks: list[dict[str, Any]]
        if role in ("system", "developer"):
            # Anthropic has one top-level system prompt; every system message contributes.
            text = _plain_text(message.get("content"), f"{path}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{path}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(message, path)
        elif role == "tool":
            role = "user"
            blocks = [_tool_result(message, path)]
        else:
            raise TranslationError(
                f"`{path}.role` {role!r} cannot be sent to an Anthropic model", param=f"{path}.role"
            )
        if not blocks:
            if role == "assistant":
                continue  # an empty assistant turn carries nothing
            raise TranslationError(f"`{path}.content` must not be empty", param=f"{path}.content")
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    if not out:
        raise TranslationError(
            "`messages` must hold at least one user or assistant message", param="messages"
        )
    for message in out:
        blocks = message["content"]
        if message["role"] == "user":
            # Anthropic wants tool results first in a user turn; the sort is stable.
            blocks.sort(key=lambda block: block["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            message["content"] = blocks[0]["text"]
    return system, out


def _plain_text(content: Any, path: str) -> str:
    """Text of a system/tool message: a string or an array of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise TranslationError(f"`{path}[{j}]` must be a text part", param=f"{path}[{j}]")
            texts.append(_string(part.get("text"), f"{path}[{j}].text"))
        return "\n".join(t for t in texts if t)
    raise TranslationError(f"`{path}` must be a string or an array of parts", param=path)


def _user_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"`{path}` must be a string or an array of parts", param=path)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        part_path = f"{path}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = _string(part.get("text"), f"{part_path}.text")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{part_path}.image_url"))
        else:
            raise TranslationError(
                f"`{part_path}` of type {kind!r} cannot be sent to an Anthropic model",
                param=part_path,
            )
    return blocks


def _image_block(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError(f"`{path}.url` must be a string", param=f"{path}.url")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise TranslationError(
            f"`{path}.url` must be an http(s) URL or a base64 data: URL", param=f"{path}.url"
        )
    media_type = match.group(1).strip().lower()
    if media_type == "image/jpg":
        media_type = "image/jpeg"
    if media_type not in _IMAGE_MEDIA_TYPES:
        raise TranslationError(
            f"`{path}.url` has media type {media_type!r}; Anthropic accepts "
            + ", ".join(sorted(_IMAGE_MEDIA_TYPES)),
            param=f"{path}.url",
        )
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": match.group(3)},
    }


def _assistant_blocks(message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    if message.get("function_call") is not None:
        raise TranslationError(
            f"`{path}.function_call` is deprecated and not translated; use `tool_calls`",
            param=f"{path}.function_call",
        )
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            key = kind if kind in ("text", "refusal") else None
            if key is None:
                raise TranslationError(
                    f"`{path}.content[{j}]` must be a text or refusal part",
                    param=f"{path}.content[{j}]",
                )
            text = _string(part.get(key), f"{path}.content[{j}].{key}")
            if text:
                blocks.append({"type": "text", "text": text})
    elif content is not None:
        text = _string(content, f"{path}.content")
        if text:
            blocks.append({"type": "text", "text": text})

    tool_calls = message.get("tool_calls")
    if tool_calls is None:
        return blocks
    if not isinstance(tool_calls, list):
        raise TranslationError(f"`{path}.tool_calls` must be an array", param=f"{path}.tool_calls")
    for j, call in enumerate(tool_calls):
        call_path = f"{path}.tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise TranslationError(f"`{call_path}` must be a function call", param=call_path)
        function = call.get("function")
        if not isinstance(function, dict):
            raise TranslationError(
                f"`{call_path}.function` must be an object", param=f"{call_path}.function"
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": _string(call.get("id"), f"{call_path}.id", required=True),
                "name": _string(function.get("name"), f"{call_path}.function.name", required=True),
                "input": _arguments(function.get("arguments"), f"{call_path}.function.arguments"),
            }
        )
    return blocks


def _arguments(raw: Any, path: str) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise TranslationError(f"`{path}` must be a JSON string", param=path)
    try:
        value = json_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise TranslationError(f"`{path}` is not valid JSON: {exc}", param=path) from None
    if not isinstance(value, dict):
        raise TranslationError(f"`{path}` must encode a JSON object", param=path)
    return value


def _tool_result(message: dict[str, Any], path: str) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": _string(message.get("tool_call_id"), f"{path}.tool_call_id", required=True),
    }
    text = _plain_text(message.get("content"), f"{path}.content")
    if text:
        block["content"] = text
    return block


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise TranslationError("`tools` must be an array", param="tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        path = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise TranslationError(
                f"`{path}` must be a function tool; others cannot be sent to Anthropic", param=path
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise TranslationError(f"`{path}.function` must be an object", param=f"{path}.function")
        translated: dict[str, Any] = {
            "name": _string(function.get("name"), f"{path}.function.name", required=True)
        }
        description = function.get("description")
        if description:
            translated["description"] = _string(description, f"{path}.function.description")
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        elif not isinstance(schema, dict):
            raise TranslationError(
                f"`{path}.function.parameters` must be an object",
                param=f"{path}.function.parameters",
            )
        elif "type" not in schema:
            schema = {"type": "object", **schema}
        translated["input_schema"] = schema
        out.append(translated)
    return out


def _tool_choice(choice: Any, *, has_tools: bool, parallel: Any) -> dict[str, Any] | None:
    translated: dict[str, Any]
    if choice is None or choice == "auto":
        if not has_tools:
            return None
        translated = {"type": "auto"}
    elif choice == "none":
        if not has_tools:
            return None
        return {"type": "none"}
    elif choice == "required":
        translated = {"type": "any"}
    elif (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        name = _string(choice["function"].get("name"), "tool_choice.function.name", required=True)
        translated = {"type": "tool", "name": name}
    else:
        raise TranslationError(
            "`tool_choice` must be 'none', 'auto', 'required' or a function choice",
            param="tool_choice",
        )
    if not has_tools:
        raise TranslationError("`tool_choice` needs `tools`", param="tool_choice")
    if parallel is False:
        translated["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto; say nothing
    return translated


def _string(value: Any, path: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise TranslationError(f"`{path}` must be a non-empty string", param=path)
    return value


# --------------------------------------------------------------------------- responses


def messages_response_to_chat(resp: dict[str, Any], *, model: str, created: int) -> dict[str, Any]:
    """Translate an Anthropic message into an OpenAI ``chat.completion`` object.

    Thinking and server-tool blocks have no chat completion counterpart and are dropped.
    """
    if not isinstance(resp, dict) or resp.get("type", "message") != "message":
        raise AnthropicProtocolError("Anthropic answered with something that is not a message")
    content = resp.get("content")
    if not isinstance(content, list):
        raise AnthropicProtocolError("Anthropic's message has no content array")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            raise AnthropicProtocolError("Anthropic's message holds a non-object content block")
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json_encoder.encode(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id(resp.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": map_finish_reason(resp.get("stop_reason")),
            }
        ],
        "usage": usage_object(*token_counts(resp.get("usage"), (0, 0, 0))),
    }


def completion_id(message_id: Any) -> str:
    if not isinstance(message_id, str) or not message_id:
        return "chatcmpl-anthropic"
    return "chatcmpl-" + message_id.removeprefix("msg_")


def map_finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def token_counts(usage: Any, previous: tuple[int, int, int]) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens from an Anthropic usage object.

    Anthropic's ``input_tokens`` leave out cache reads and writes; OpenAI's ``prompt_tokens``
    count every input token, so the cache figures are added back. Fields absent from
    ``usage`` keep their ``previous`` value (a stream reports usage in pieces).
    """
    prompt, cached, completion = previous
    if not isinstance(usage, dict):
        return previous
    if any(k in usage for k in ("input_tokens", "cache_read_input_tokens")):
        cached = _count(usage.get("cache_read_input_tokens"))
        prompt = (
            _count(usage.get("input_tokens"))
            + _count(usage.get("cache_creation_input_tokens"))
            + cached
        )
    if "output_tokens" in usage:
        completion = _count(usage.get("output_tokens"))
    return prompt, cached, completion


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_object(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage
