"""Connection limits (limits.py): request-head time and size, stalled bodies, keep-alive, the
connection cap; raw sockets on 127.0.0.1 against a real server."""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from server_live import Live, LiveFactory

from ooo_storage.server import ServerConfig
from ooo_storage.server.limits import connections_for

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


def head(port: int, method: str = "GET", path: str = "/k") -> bytes:
    """A request head without its final empty line."""
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closing)."""
    chunks = []
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


async def status_of(conn: Conn, request: bytes) -> int:
    """Send one request on a keep-alive connection, read its whole response, return the status."""
    reader, writer = conn
    writer.write(request)
    line = await reader.readline()
    assert line, "the server closed the connection without a reply"
    status = int(line.split()[1])
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def trickle(writer: asyncio.StreamWriter, line: bytes, every: float) -> None:
    """The slowloris behaviour: one more piece every ``every`` seconds, for ever."""
    while True:
        await asyncio.sleep(every)
        writer.write(line)


async def test_head_must_complete_within_header_timeout(make_live: LiveFactory) -> None:
    live = await make_live(header_timeout=0.3)
    port = live.runner.port
    async with connection(port) as (reader, writer):
        loop = asyncio.get_running_loop()
        writer.write(head(port))
        start = loop.time()
        slow = asyncio.create_task(trickle(writer, b"X-Slow: 1\r\n", 0.05))  # progress does not help
        try:
            reply = await until_closed(reader)
        finally:
            slow.cancel()
        elapsed = loop.time() - start
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert reply.endswith(b"ooo: request head not complete within 0.3 s")
    assert 0.3 <= elapsed < 3, elapsed
    assert await live.request("GET", "k") == (404, b"ooo: empty key")  # others are served


async def test_a_late_head_gets_its_408_when_the_keepalive_timeout_is_shorter(make_live: LiveFactory) -> None:
    """A head that has begun is the header timeout's business, not the keep-alive timeout's: with
    ``keepalive_timeout`` under ``header_timeout`` the aiohttp engine closed such a connection
    silently at the keep-alive timeout, where the lean front answers 408 at the header timeout."""
    live = await make_live(header_timeout=0.6, keepalive_timeout=0.2)
    port = live.runner.port
    async with connection(port) as (reader, writer):
        loop = asyncio.get_running_loop()
        writer.write(head(port))
        start = loop.time()
        reply = await until_closed(reader)
        elapsed = loop.time() - start
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert reply.endswith(b"ooo: request head not complete within 0.6 s")
    assert 0.6 <= elapsed < 3, elapsed


async def test_head_time_counts_from_its_first_byte(make_live: LiveFactory) -> None:
    """Idle time before a request is the keep-alive timeout's business, not the head's."""
    live = await make_live(header_timeout=0.2)
    port = live.runner.port
    async with connection(port) as conn:
        assert await status_of(conn, head(port) + b"\r\n") == 404
        await asyncio.sleep(0.4)  # idle between requests, longer than header_timeout
        assert await status_of(conn, head(port) + b"\r\n") == 404


async def test_head_size_is_bounded_by_default(make_live: LiveFactory) -> None:
    """Endless header lines (each under aiohttp's line cap) get 431 once the head passes 32 KiB;
    they used to be read up to 128 headers of 8 KiB, ~2 MB of memory per connection."""
    live = await make_live()
    port = live.runner.port
    line = b"X-Fill: " + b"a" * 1000 + b"\r\n"
    async with connection(port) as (reader, writer):
        writer.write(head(port))
        for _ in range(40):
            writer.write(line)
        reply = await until_closed(reader)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert reply.endswith(b"ooo: request head too large (limit 32768 bytes)")
    async with connection(port) as conn:  # a large head under the limit is fine
        assert await status_of(conn, head(port) + line * 25 + b"\r\n") == 404


async def test_header_count_is_bounded_by_default(live: Live, caplog: pytest.LogCaptureFixture) -> None:
    port = live.runner.port
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(101))
    for refused in [many, b"X-Long: " + b"a" * 8191 + b"\r\n"]:  # too many headers, one too long
        async with connection(port) as conn:
            assert await status_of(conn, head(port) + refused + b"\r\n") == 400
    async with connection(port) as conn:
        assert await status_of(conn, head(port) + many[: many.index(b"X-99:")] + b"\r\n") == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # bad input: INFO


async def test_idle_keepalive_connection_is_closed(make_live: LiveFactory) -> None:
    live = await make_live(keepalive_timeout=0.3)
    port = live.runner.port
    async with connection(port) as conn:
        loop = asyncio.get_running_loop()
        assert await status_of(conn, head(port) + b"\r\n") == 404
        start = loop.time()
        assert await until_closed(conn[0]) == b""
        assert 0.3 <= loop.time() - start < 3


async def test_stalled_body_ends_the_connection(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ooo_storage.server")
    live = await make_live(body_timeout=0.3)
    port = live.runner.port
    async with connection(port) as (reader, writer):
        loop = asyncio.get_running_loop()
        writer.write(head(port, "POST") + b"Content-Length: 100\r\n\r\n" + b'{"a": "')
        start = loop.time()
        answer = await until_closed(reader)
        assert 0.3 <= loop.time() - start < 3
    # the 408 that the log and the metrics count reaches the client (before: only the close)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b"ooo: request body stalled (nothing for 0.3 s)"), answer
    assert await live.request("GET", "k") == (404, b"ooo: empty key")
    assert "request body received nothing for 0.3 s" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_slow_but_moving_body_is_accepted(make_live: LiveFactory) -> None:
    live = await make_live(body_timeout=0.3)
    port = live.runner.port
    body = b'{"slow": "' + b"x" * 12 + b'"}'
    async with connection(port) as conn:
        reader, writer = conn
        writer.write(head(port, "POST") + b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 2):  # ~1 s in all, more than body_timeout
            await asyncio.sleep(0.1)
            writer.write(body[i : i + 2])
        assert int((await reader.readline()).split()[1]) == 200
    assert (await live.get("k"))["data"] == {"slow": "x" * 12}


async def test_connection_limit_closes_the_oldest_waiting_connection(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    live = await make_live(max_connections=3)
    port = live.runner.port
    async with connection(port) as first, connection(port) as second, connection(port) as third:
        for conn in (first, second, third):  # admitted, in this order, now idle between requests
            assert await status_of(conn, head(port) + b"\r\n") == 404
        async with connection(port) as fourth:
            assert await status_of(fourth, head(port) + b"\r\n") == 404
        assert await until_closed(first[0]) == b""
        assert await status_of(second, head(port) + b"\r\n") == 404
    assert "connection limit reached (3 open)" in caplog.text


async def test_connection_limit_refuses_when_all_are_busy(
    make_live: LiveFactory, caplog: pytest.LogCaptureFixture
) -> None:
    live = await make_live(max_connections=2)
    port = live.runner.port
    subscribers = [await live.ws("a"), await live.ws("b")]  # busy: never "waiting for a request"
    for _ in range(3):
        async with connection(port) as (reader, _writer):
            reply = await until_closed(reader)
        assert reply.startswith(b"HTTP/1.1 503 ") and reply.endswith(b"ooo: too many connections, retry later")
    for ws in subscribers:
        assert not ws.closed
        await ws.close()
    refusals = [r for r in caplog.records if "all busy" in r.getMessage()]
    assert len(refusals) == 1, caplog.text  # one line, not one per refused connection


def test_default_connection_limit_leaves_descriptors_for_files() -> None:
    assert ServerConfig().max_connections is None  # derived at start
    assert connections_for(1024) == 768
    assert connections_for(256) == 128
    assert connections_for(64) == 32
    assert connections_for(20000) == 15000
    assert connections_for(1) == 1


async def test_slowloris_under_a_low_fd_limit_does_not_lock_others_out() -> None:
    """A real ``serve`` process under ``ulimit -n 64``: 100 partial heads used to take every
    descriptor, so that nobody else was served and nothing was logged."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ooo_storage", "serve", "--port", "0", "--memory-only",
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)),
    )
    assert proc.stderr is not None
    log: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while b"serving on" not in (line := await proc.stderr.readline()):
                assert line, b"".join(log)
                log.append(line)
        port = int(line.rsplit(b":", 1)[1].split()[0])
        slow = []
        for _ in range(100):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head(port))
            slow.append(writer)
        async with connection(port) as conn:
            assert await asyncio.wait_for(status_of(conn, head(port) + b"\r\n"), 5) == 404
        for writer in slow:
            writer.close()
    finally:
        proc.terminate()
        log.append(await proc.stderr.read())
        await proc.wait()
    text = b"".join(log).decode()
    assert "accepting at most 32 connections (from ulimit -n)" in text
    assert text.count("connection limit reached (32 open)") == 1, text
