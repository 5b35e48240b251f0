"""REST calls whose connection drops: what is re-sent, and what the caller is told.

aiohttp re-sends GET, PUT and DELETE once, silently, when a (pooled keep-alive) connection drops before
the reply. A re-sent DELETE turns a success into a 404, so the client re-sends only GETs and reports a
write whose outcome is unknown as ``RequestUncertain``. A tiny HTTP server counts what really reaches
it; the real server shows the wrong answer the silent re-send gave.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ooo_storage import Layered, MemoryLayer
from ooo_storage.client import Client, ClientError, ClientOptions, ConnectionFailed, RequestUncertain
from ooo_storage.server import ServerRunner

OBJECT = b'{"created":1,"updated":0,"index":"k","data":1}'


@dataclass
class Swallower:
    """HTTP/1.1 on 127.0.0.1: answers the first request of each connection and keeps it alive, then
    reads the next request in full, records it, and closes the socket without answering."""

    received: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answered in range(2):
                method, path, length = self._head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                self.received.append((method, path))
                if answered:
                    break
                writer.write(self._reply(method, path))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed the connection first
        finally:
            writer.close()

    @staticmethod
    def _head(raw: bytes) -> tuple[str, str, int]:
        request_line, *headers = raw.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ")
        lengths = [int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")]
        return method, path, sum(lengths)

    @staticmethod
    def _reply(method: str, path: str) -> bytes:
        if method == "DELETE":
            return b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        body = b'{"keys":["k"]}' if path == "/" else OBJECT if method == "GET" else b'{"index":"k"}'
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.fixture
async def swallower() -> AsyncIterator[Swallower]:
    state = Swallower()
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield state


Call = Callable[[Client], Awaitable[Any]]
WRITES: dict[str, Call] = {
    "delete": lambda c: c.delete("k"),
    "set": lambda c: c.set("k", 1),
    "push": lambda c: c.push("logs/*", 1),
    "patch": lambda c: c.patch("k", {"a": 1}),
}


@pytest.mark.parametrize("name", WRITES)
async def test_a_write_on_a_dropped_keep_alive_connection_is_sent_once_and_uncertain(
    swallower: Swallower, name: str
) -> None:
    call = WRITES[name]
    async with Client(swallower.url) as client:
        await call(client)  # answered; the connection stays in the pool
        sent = len(swallower.received)
        with pytest.raises(RequestUncertain) as caught:
            await call(client)  # reuses it: the server reads the request and hangs up
    resent = swallower.received[sent:]
    assert len(resent) == 1, f"the {name} reached the server {len(resent)} times"
    assert caught.value.status == 0 and isinstance(caught.value, ClientError)
    assert not isinstance(caught.value, ConnectionFailed)  # a ConnectionFailed retry loop skips it
    assert caught.value.method == resent[0][0]
    assert "may or may not have been applied" in str(caught.value)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda c: c.get("k"), {"created": 1, "updated": 0, "index": "k", "data": 1}),
        (lambda c: c.keys(), ["k"]),
    ],
)
async def test_a_read_on_a_dropped_connection_is_sent_again(swallower: Swallower, call: Call,
                                                            expected: Any) -> None:
    async with Client(swallower.url) as client:
        await call(client)
        sent = len(swallower.received)
        assert await call(client) == expected  # swallowed once, answered on a fresh connection
    assert len(swallower.received) - sent == 2


async def test_a_read_is_sent_at_most_read_retries_more_times(swallower: Swallower) -> None:
    async with Client(swallower.url, options=ClientOptions(read_retries=0)) as client:
        await client.get("k")
        with pytest.raises(ConnectionFailed, match="connection lost"):
            await client.get("k")
    assert len(swallower.received) == 2


@pytest.mark.parametrize("name", [*WRITES, "get"])
async def test_a_request_that_cannot_connect_was_never_sent(unused_tcp_port: int, name: str) -> None:
    call = WRITES.get(name, lambda c: c.get("k"))
    async with Client(f"http://127.0.0.1:{unused_tcp_port}") as client:
        with pytest.raises(ConnectionFailed) as caught:
            await call(client)
    assert not isinstance(caught.value, RequestUncertain)


async def test_delete_whose_reply_is_lost_is_not_turned_into_a_404() -> None:
    """The real server deletes the key, then the connection drops before the 204 goes out."""
    deletes: list[str] = []

    @web.middleware
    async def hang_up_after_the_first_delete(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if request.method == "DELETE":
            deletes.append(request.path)
            if len(deletes) == 1 and request.transport is not None:
                request.transport.abort()
        return response

    async with (
        Layered(memory=MemoryLayer()) as store,
        ServerRunner(store, port=0, middlewares=[hang_up_after_the_first_delete]) as runner,
        Client(runner.url) as client,
    ):
        await client.set("doomed", 1)
        with pytest.raises(RequestUncertain):
            await client.delete("doomed")  # before: re-sent by aiohttp, answered 404
        assert deletes == ["/doomed"]
        with pytest.raises(ClientError) as caught:
            await client.get("doomed")
        assert caught.value.status == 404  # it was applied: the caller can find out
