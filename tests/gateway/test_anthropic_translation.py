"""Translation between OpenAI Chat Completions and Anthropic Messages, and the fake Anthropic."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.gateway.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    AnthropicProtocolError,
    TranslationError,
    chat_request_to_messages,
    messages_response_to_chat,
)
from appliance.gateway.anthropic_errors import anthropic_error_to_openai
from appliance.gateway.anthropic_stream import StreamTranslator
from appliance.kernel.errors import ApplianceError
from tests.fakes.anthropic_server import FAKE_API_KEY, REQUESTS, make_anthropic_app

MODEL = "claude-test"
CREATED = 1_700_000_000


def translate(body: dict[str, Any]) -> dict[str, Any]:
    return chat_request_to_messages(body, upstream_model=MODEL)


def user(text: str = "hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


# --------------------------------------------------------------------------- requests


def test_minimal_request_gets_default_max_tokens() -> None:
    assert translate({"model": "gw-model", "messages": [user()]}) == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_system_and_developer_messages_become_top_level_system() -> None:
    out = translate(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user(),
            ]
        }
    )
    assert out["system"] == "Be brief.\n\nUse French."
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_sampling_parameters() -> None:
    out = translate(
        {
            "messages": [user()],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "alice",
            "seed": 7,
        }
    )
    assert out["max_tokens"] == 20  # max_completion_tokens wins
    assert out["temperature"] == 0.5
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "alice"}
    assert "seed" not in out and "stream_options" not in out


def test_max_tokens_and_stop_list() -> None:
    out = translate({"messages": [user()], "max_tokens": 5, "stop": ["a", "", "b"]})
    assert out["max_tokens"] == 5
    assert out["stop_sequences"] == ["a", "b"]


def test_consecutive_same_role_messages_are_merged() -> None:
    out = translate(
        {
            "messages": [
                user("one"),
                user("two"),
                {"role": "assistant", "content": "three"},
                {"role": "assistant", "content": [{"type": "text", "text": "four"}]},
            ]
        }
    )
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
    ]


def test_image_parts() -> None:
    out = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/jpg;base64,/9j/", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.test/a.gif"}},
                    ],
                }
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/a.gif"}},
    ]


@pytest.mark.parametrize(
    "url",
    ["data:image/svg+xml;base64,PHN2Zz4=", "data:image/png,rawbytes", "file:///etc/passwd"],
)
def test_untranslatable_images(url: str) -> None:
    body = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
        ]
    }
    with pytest.raises(TranslationError) as info:
        translate(body)
    assert info.value.param == "messages[0].content[0].image_url.url"


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    out = translate({"messages": [user()], "tools": tools})
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out

    def choice(value: Any, **extra: Any) -> Any:
        return translate({"messages": [user()], "tools": tools, "tool_choice": value, **extra})[
            "tool_choice"
        ]

    assert choice("auto") == {"type": "auto"}
    assert choice("none") == {"type": "none"}
    assert choice("required") == {"type": "any"}
    assert choice({"type": "function", "function": {"name": "now"}}) == {
        "type": "tool",
        "name": "now",
    }
    assert choice("required", parallel_tool_calls=False) == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert choice(None, parallel_tool_calls=False) == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


def test_tool_round_trip_messages() -> None:
    out = translate(
        {
            "messages": [
                user("Weather in Paris and Rome?"),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "24C"}],
                },
                user("Thanks"),
            ]
        }
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "24C"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


def test_tool_results_are_put_before_text_in_a_user_turn() -> None:
    out = translate(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": "Let me check.",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ],
                },
                user("also this"),
                {"role": "tool", "tool_call_id": "c", "content": ""},
            ]
        }
    )
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "c", "name": "f", "input": {}},
    ]
    assert out["messages"][1]["content"] == [
        {"type": "tool_result", "tool_use_id": "c"},
        {"type": "text", "text": "also this"},
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [user()], "n": 2}, "n"),
        ({"messages": [user()], "logprobs": True}, "logprobs"),
        ({"messages": [user()], "presence_penalty": 0.5}, "presence_penalty"),
        ({"messages": [user()], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [user()], "temperature": 1.5}, "temperature"),
        ({"messages": [user()], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user()], "stop": 3}, "stop"),
        ({"messages": [user()], "tool_choice": "required"}, "tool_choice"),
        ({"messages": [user()], "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "messages"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [user("")]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)
def test_untranslatable_requests(body: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        translate(body)
    assert info.value.param == param
    assert isinstance(info.value, ValueError) and isinstance(info.value, ApplianceError)
    assert info.value.status == 400
    assert info.value.message


# --------------------------------------------------------------------------- responses


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": "msg_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "claude-upstream",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }
    message.update(overrides)
    return message


def test_text_response() -> None:
    assert messages_response_to_chat(anthropic_message(), model="gw", created=CREATED) == {
        "id": "chatcmpl-01ABC",
        "object": "chat.completion",
        "created": CREATED,
        "model": "gw",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def test_tool_use_response() -> None:
    resp = anthropic_message(
        content=[
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        stop_reason="tool_use",
    )
    choice = messages_response_to_chat(resp, model="gw", created=CREATED)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
    ],
)
def test_stop_reason_mapping(stop_reason: str | None, finish_reason: str) -> None:
    chat = messages_response_to_chat(
        anthropic_message(stop_reason=stop_reason), model="gw", created=CREATED
    )
    assert chat["choices"][0]["finish_reason"] == finish_reason


def test_usage_counts_cached_prompt_tokens() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 100,
        "output_tokens": 4,
    }
    chat = messages_response_to_chat(anthropic_message(usage=usage), model="gw", created=CREATED)
    assert chat["usage"] == {
        "prompt_tokens": 115,
        "completion_tokens": 4,
        "total_tokens": 119,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_malformed_response_is_an_upstream_error() -> None:
    with pytest.raises(AnthropicProtocolError) as info:
        messages_response_to_chat({"type": "message"}, model="gw", created=CREATED)
    assert info.value.status == 502


# --------------------------------------------------------------------------- errors


def anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "kind", "expected_status", "expected_type", "code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", "invalid_request"),
        (404, "not_found_error", 404, "invalid_request_error", "not_found"),
        (413, "request_too_large", 413, "invalid_request_error", "payload_too_large"),
        (429, "rate_limit_error", 429, "requests", "rate_limit_exceeded"),
        (500, "api_error", 500, "server_error", "upstream_error"),
        (529, "overloaded_error", 503, "server_error", "service_unavailable"),
        (401, "authentication_error", 502, "server_error", "upstream_auth_error"),
    ],
)
def test_error_mapping(
    status: int, kind: str, expected_status: int, expected_type: str, code: str
) -> None:
    mapped_status, envelope = anthropic_error_to_openai(status, anthropic_error(kind, "boom"))
    assert mapped_status == expected_status
    assert envelope["error"]["type"] == expected_type
    assert envelope["error"]["code"] == code
    assert envelope["error"]["param"] is None
    assert "boom" in envelope["error"]["message"]
    assert set(envelope["error"]) == {"message", "type", "param", "code"}


def test_error_body_that_is_not_json() -> None:
    status, envelope = anthropic_error_to_openai(502, b"<html>Bad gateway</html>")
    assert status == 502
    assert envelope["error"]["type"] == "server_error"
    assert "Bad gateway" in envelope["error"]["message"]
    assert anthropic_error_to_openai(200, b"")[0] == 502


# --------------------------------------------------------------------------- streaming


def sse(*events: dict[str, Any], crlf: bool = False) -> bytes:
    out = b""
    for event in events:
        out += f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
    return out.replace(b"\n", b"\r\n") if crlf else out


def text_stream(text_parts: list[str], *, stop_reason: str = "end_turn") -> list[dict[str, Any]]:
    return [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01XYZ",
                "type": "message",
                "role": "assistant",
                "model": "claude-upstream",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in text_parts
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
        {"type": "message_stop"},
    ]


def tool_stream() -> list[dict[str, Any]]:
    events = text_stream(["Checking."], stop_reason="tool_use")
    tool_events: list[dict[str, Any]] = [
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_A",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}},
        },
        {"type": "content_block_stop", "index": 2},
    ]
    return events[:5] + tool_events + events[5:]


def parse_openai_sse(raw: bytes) -> list[Any]:
    """Split translator output into decoded events; ``[DONE]`` stays a string."""
    assert raw.endswith(b"\n\n")
    events: list[Any] = []
    for frame in raw.split(b"\n\n")[:-1]:
        assert frame.startswith(b"data: "), frame
        payload = frame[len(b"data: ") :]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def run_translator(raw: bytes, *, include_usage: bool = True, step: int | None = None) -> bytes:
    translator = StreamTranslator(model="gw", created=CREATED, include_usage=include_usage)
    step = step or len(raw) or 1
    out = b"".join(translator.feed(raw[i : i + step]) for i in range(0, len(raw), step))
    return out + translator.finish()


def test_text_stream() -> None:
    translator = StreamTranslator(model="gw", created=CREATED, include_usage=True)
    raw = translator.feed(sse(*text_stream(["Hel", "lo", " world"])))
    assert translator.finish() == b""
    assert translator.usage == (25, 15)
    assert translator.finish_reason == "stop"
    events = parse_openai_sse(raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-01XYZ"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == CREATED and chunk["model"] == "gw"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["usage"] is None
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello world"
    assert chunks[-2]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}


def test_stream_without_usage_has_no_usage_fields() -> None:
    events = parse_openai_sse(run_translator(sse(*text_stream(["a"])), include_usage=False))
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_tool_stream() -> None:
    events = parse_openai_sse(run_translator(sse(*tool_stream())))
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_A",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == (
        '{"city": "Paris"}'
    )
    # a tool without arguments still ends up with a parseable "{}"
    second = [c for c in calls if c["index"] == 1]
    assert second[0]["id"] == "toolu_B" and second[0]["function"]["name"] == "now"
    assert "".join(c["function"]["arguments"] for c in second) == "{}"
    finish = [e for e in events[:-1] if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [e["choices"][0]["finish_reason"] for e in finish] == ["tool_calls"]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("stream", ["text", "tool"])
def test_stream_split_at_every_byte(stream: str, crlf: bool) -> None:
    events = text_stream(["Grüße, ", "世界", "!"]) if stream == "text" else tool_stream()
    raw = sse(*events, crlf=crlf)
    whole = run_translator(raw)
    assert parse_openai_sse(whole)[-1] == "[DONE]"
    assert run_translator(raw, step=1) == whole
    assert run_translator(raw, step=7) == whole


def test_stream_comments_and_multiline_data() -> None:
    raw = sse(*text_stream(["x"])[:2])
    raw += b": keep-alive\n\n"
    raw += b'event: content_block_delta\ndata: {"type": "content_block_delta",\n'
    raw += b'data: "index": 0, "delta": {"type": "text_delta", "text": "y"}}\n\n'
    raw += sse(*text_stream(["x"])[4:])
    events = parse_openai_sse(run_translator(raw))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == "y"


def test_stream_error_event() -> None:
    translator = StreamTranslator(model="gw", created=CREATED, include_usage=False)
    raw = sse(*text_stream(["partial"])[:4])
    raw += sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    events = parse_openai_sse(translator.feed(raw))
    assert events[-2] == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
    }
    assert events[-1] == "[DONE]"
    # nothing after [DONE], whatever the upstream still sends
    assert translator.feed(sse({"type": "message_stop"})) == b""
    assert translator.finish() == b""


def test_stream_that_ends_early() -> None:
    translator = StreamTranslator(model="gw", created=CREATED, include_usage=True)
    raw = sse(*text_stream(["partial"])[:5])
    first = parse_openai_sse(translator.feed(raw))
    assert first[0]["choices"][0]["delta"]["role"] == "assistant"
    tail = parse_openai_sse(translator.finish())
    assert tail[0]["error"]["type"] == "server_error"
    assert "ended before" in tail[0]["error"]["message"]
    assert tail[1] == "[DONE]"
    assert translator.usage == (25, 1)


def test_stream_last_event_without_blank_line_is_accepted() -> None:
    raw = sse(*text_stream(["ok"])).rstrip(b"\n")
    events = parse_openai_sse(run_translator(raw))
    assert events[-1] == "[DONE]" and "error" not in events[-2]


@pytest.mark.parametrize(
    "raw",
    [
        b"event: message_start\ndata: {not json\n\n",
        b'data: {"type": "content_block_delta", "index": 0, "delta": {}}\n\n',
        b'data: {"type": "message_start"}\n\n',
    ],
    ids=["bad-json", "before-start", "missing-message"],
)
def test_malformed_streams_end_with_an_error(raw: bytes) -> None:
    events = parse_openai_sse(run_translator(raw))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "upstream_error"


# --------------------------------------------------------------------------- fake Anthropic


@pytest.fixture
async def anthropic() -> AsyncIterator[tuple[web.Application, aiohttp.ClientSession, str]]:
    app = make_anthropic_app(reply="Hello from the fake Claude today")
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield app, session, str(server.make_url("/v1/messages"))


HEADERS = {"x-api-key": FAKE_API_KEY, "anthropic-version": ANTHROPIC_VERSION}


async def test_translated_request_against_fake_anthropic(
    anthropic: tuple[web.Application, aiohttp.ClientSession, str],
) -> None:
    app, session, url = anthropic
    chat_request = {
        "model": "gw-claude",
        "messages": [{"role": "system", "content": "Be kind."}, user("Say hello")],
        "temperature": 0.2,
    }
    body = chat_request_to_messages(chat_request, upstream_model="claude-sonnet-test")
    async with session.post(url, json=body, headers=HEADERS) as resp:
        assert resp.status == 200
        payload = await resp.json()
    chat = messages_response_to_chat(payload, model="gw-claude", created=CREATED)

    assert chat["object"] == "chat.completion"
    assert chat["id"].startswith("chatcmpl-")
    assert chat["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello from the fake Claude today",
        "refusal": None,
    }
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    received = app[REQUESTS][-1]
    assert received.body == body
    assert received.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert_valid_chat_completion(chat)


async def test_translated_stream_against_fake_anthropic(
    anthropic: tuple[web.Application, aiohttp.ClientSession, str],
) -> None:
    _, session, url = anthropic
    body = chat_request_to_messages(
        {"messages": [user("Say hello")], "stream": True, "max_tokens": 4},
        upstream_model="claude-sonnet-test",
    )
    translator = StreamTranslator(model="gw-claude", created=CREATED, include_usage=True)
    out = b""
    async with session.post(url, json=body, headers=HEADERS) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        async for piece in resp.content.iter_chunked(5):
            out += translator.feed(piece)
    out += translator.finish()
    events = parse_openai_sse(out)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert text == "Hello from the fake "
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}
    assert translator.usage == (2, 4)


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"anthropic-version": ANTHROPIC_VERSION}, 401, "authentication_error"),
        (
            {"x-api-key": "wrong", "anthropic-version": ANTHROPIC_VERSION},
            401,
            "authentication_error",
        ),
        ({"x-api-key": FAKE_API_KEY}, 400, "invalid_request_error"),
    ],
)
async def test_fake_anthropic_checks_headers(
    anthropic: tuple[web.Application, aiohttp.ClientSession, str],
    headers: dict[str, str],
    status: int,
    kind: str,
) -> None:
    _, session, url = anthropic
    body = chat_request_to_messages({"messages": [user()]}, upstream_model="m")
    async with session.post(url, json=body, headers=headers) as resp:
        assert resp.status == status
        payload = await resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == kind


@pytest.mark.parametrize("missing", ["model", "max_tokens", "messages"])
async def test_fake_anthropic_validates_body(
    anthropic: tuple[web.Application, aiohttp.ClientSession, str], missing: str
) -> None:
    _, session, url = anthropic
    body = chat_request_to_messages({"messages": [user()]}, upstream_model="m")
    del body[missing]
    async with session.post(url, json=body, headers=HEADERS) as resp:
        assert resp.status == 400
        status, envelope = anthropic_error_to_openai(resp.status, await resp.read())
    assert status == 400
    assert missing in envelope["error"]["message"]


async def test_fake_anthropic_failure_maps_to_503() -> None:
    app = make_anthropic_app(fail_status=529)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        body = chat_request_to_messages({"messages": [user()]}, upstream_model="m")
        async with session.post(server.make_url("/v1/messages"), json=body, headers=HEADERS) as r:
            assert r.status == 529
            status, envelope = anthropic_error_to_openai(r.status, await r.read())
    assert status == 503
    assert envelope == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
    }
    assert len(app[REQUESTS]) == 1


def assert_valid_chat_completion(chat: dict[str, Any]) -> None:
    """Validate with the OpenAI SDK's own model; the SDK is a dev dependency."""
    try:
        from openai.types.chat import ChatCompletion
    except ImportError:  # pragma: no cover - the message is the fix
        pytest.fail("the OpenAI SDK is missing: pip install -e '.[dev]'")
    parsed = ChatCompletion.model_validate(chat)
    assert parsed.choices[0].message.content == chat["choices"][0]["message"]["content"]
