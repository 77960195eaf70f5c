"""The lean upstream client against raw servers that frame responses every legal way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import yarl

from appliance.gateway.upstream_client import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    build_head,
)
from tests.conftest import free_port

Reply = Callable[[bytes], list[bytes]]  # request bytes -> pieces to send (None piece = close)


async def _server(reply: Reply, *, close_after: bool = False) -> tuple[asyncio.Server, yarl.URL,
                                                                     list[bytes]]:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                seen.append(head + body)
                for piece in reply(head + body):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, yarl.URL(f"http://127.0.0.1:{port}/v1/chat/completions"), seen


async def _call(pool: UpstreamPool, url: yarl.URL, **limits: float) -> tuple[int, bytes]:
    opts = {"connect_s": 2.0, "first_byte_s": 2.0, "gap_s": 2.0, "total_s": 5.0, **limits}
    head = build_head(url, {"Content-Type": "application/json"})
    response = await pool.request(url, head, b'{"x":1}', **opts)
    return response.status, await response.read()


def _bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool()
    yield p
    p.close()


async def test_content_length_and_keep_alive(pool: UpstreamPool) -> None:
    server, url, seen = await _server(
        lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    assert await _call(pool, url) == (200, b"hello")
    assert await _call(pool, url) == (200, b"hello")
    assert len(seen) == 2
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert seen[0].endswith(b'Content-Length: 7\r\n\r\n{"x":1}')
    server.close()


async def test_chunked_body_split_at_every_byte(pool: UpstreamPool) -> None:
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    server, url, _ = await _server(lambda req: _bytewise(wire))
    assert await _call(pool, url) == (200, b"hello, world")
    assert await _call(pool, url) == (200, b"hello, world")  # connection reused cleanly
    server.close()


async def test_body_until_close(pool: UpstreamPool) -> None:
    server, url, _ = await _server(lambda req: [b"HTTP/1.0 200 OK\r\n\r\nall of it"],
                                   close_after=True)
    assert await _call(pool, url) == (200, b"all of it")
    server.close()


async def test_stale_idle_connection_is_retried_on_a_new_one(pool: UpstreamPool) -> None:
    # the server answers once per connection, then closes it (keep-alive timeout)
    server, url, seen = await _server(
        lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], close_after=True)
    assert await _call(pool, url) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert await _call(pool, url) == (200, b"ok")
    assert len(seen) == 2
    server.close()


async def test_close_mid_body_is_a_protocol_error(pool: UpstreamPool) -> None:
    server, url, _ = await _server(
        lambda req: [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"], close_after=True)
    with pytest.raises(UpstreamProtocolError, match="middle of the body"):
        await _call(pool, url)
    server.close()


async def test_not_http_is_refused(pool: UpstreamPool) -> None:
    server, url, _ = await _server(lambda req: [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"])
    with pytest.raises(UpstreamProtocolError, match="not answer in HTTP"):
        await _call(pool, url)
    server.close()


async def test_refused_connection(pool: UpstreamPool) -> None:
    url = yarl.URL(f"http://127.0.0.1:{free_port()}/v1/x")
    with pytest.raises(UpstreamConnectError):
        await _call(pool, url)


async def test_first_byte_and_gap_timeouts(pool: UpstreamPool) -> None:
    server, url, _ = await _server(lambda req: [])  # never answers
    with pytest.raises(UpstreamTimeoutError, match="sent no response"):
        await _call(pool, url, first_byte_s=0.2)
    server.close()
    stall = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    server, url, _ = await _server(lambda req: [stall])
    head = build_head(url, {})
    response = await pool.request(url, head, b"{}", connect_s=1, first_byte_s=1, gap_s=0.2,
                                  total_s=5)
    pieces = []
    with pytest.raises(UpstreamTimeoutError, match="sent nothing"):
        async for piece in response.iter():
            pieces.append(piece)
    assert pieces == [b"abc"]
    response.close()
    server.close()


def test_build_head_omits_default_port() -> None:
    head = build_head(yarl.URL("https://api.example.com/v1/messages?beta=1"),
                      {"x-api-key": "k"})
    assert head == (b"POST /v1/messages?beta=1 HTTP/1.1\r\nHost: api.example.com\r\n"
                    b"x-api-key: k\r\n")
