"""Stream taps: watch OpenAI server-sent events go by to learn the usage, without re-encoding."""

from __future__ import annotations

from typing import Protocol

import msgspec


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _UsageOnly(msgspec.Struct):
    usage: Usage | None = None


class _Choice(msgspec.Struct):
    index: int = 0


class _UsageChunk(msgspec.Struct):
    usage: Usage | None = None
    choices: list[_Choice] = []


_usage_decoder = msgspec.json.Decoder(_UsageOnly)
_chunk_decoder = msgspec.json.Decoder(_UsageChunk)


def usage_of(body: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of a non-streamed OpenAI response body; zeros if absent."""
    try:
        usage = _usage_decoder.decode(body).usage
    except msgspec.DecodeError:
        return 0, 0
    return (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)


class StreamTransform(Protocol):
    """Turns upstream stream bytes into client stream bytes and tracks token usage."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    @property
    def usage(self) -> tuple[int, int]: ...


class UsageTap:
    """Passes an OpenAI event stream through unchanged and picks the usage chunk out of it.

    When the gateway itself asked the upstream for usage (``strip_usage=True``) the usage-only
    chunk is removed, so the client sees exactly what it asked for; every other byte passes.
    """

    def __init__(self, *, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._buf = b""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.chunks = 0

    @property
    def usage(self) -> tuple[int, int]:
        return self.prompt_tokens, self.completion_tokens

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        if b"\n\n" not in self._buf:
            if not self._strip and len(self._buf) > 65536:
                self._buf = self._buf[-65536:]
            return b"" if self._strip else data
        *events, self._buf = self._buf.split(b"\n\n")
        kept: list[bytes] = []
        for event in events:
            self.chunks += 1
            if b'"usage"' in event and self._take_usage(event):
                if self._strip:
                    continue
            kept.append(event)
        if not self._strip:
            return data
        return b"".join(e + b"\n\n" for e in kept)

    def _take_usage(self, event: bytes) -> bool:
        """Record the usage of a usage-only chunk; True when this event was one."""
        payload = event.partition(b"data:")[2].strip()
        try:
            chunk = _chunk_decoder.decode(payload)
        except msgspec.DecodeError:
            return False
        if chunk.usage is None:
            return False
        self.prompt_tokens = chunk.usage.prompt_tokens
        self.completion_tokens = chunk.usage.completion_tokens
        return not chunk.choices

    def finish(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest if self._strip else b""
