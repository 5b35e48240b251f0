"""Conflation instead of disconnects (issue 11): a subscriber whose outbox overflows loses its
queued patches, not its connection, and catches up with one fresh snapshot once its socket drains.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import jsonpatch
import orjson
import pytest
from server_live import Follower, Live, LiveFactory

from ooo_storage.server.connection import Connection

OUTBOX = 64 * 1024
KEYS = 4


class RawSubscriber:
    """A websocket subscriber on a raw socket with a tiny receive buffer: it reads only when told,
    so the server sees a subscriber that stopped reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.state: Any = None
        self.snapshots = 0
        self.frames = 0
        self.closed: tuple[int, bytes] | None = None

    @classmethod
    async def open(cls, live: Live, path: str) -> RawSubscriber:
        host, _, port = live.ws_base.removeprefix("ws://").partition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (host, int(port)))
        await loop.sock_sendall(
            sock,
            f"GET /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode(),
        )
        sub = cls(sock)
        while b"\r\n\r\n" not in sub.buf:
            sub.buf += await loop.sock_recv(sock, 1)
        head, _, sub.buf = sub.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return sub

    async def _frame(self) -> tuple[int, bytes]:
        """The next whole frame (server frames are unmasked): its opcode and payload."""
        loop = asyncio.get_running_loop()
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            chunk = await loop.sock_recv(self.sock, 1 << 16)
            if not chunk:
                raise ConnectionError("the server ended the connection")
            self.buf += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        opcode, size, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            (size,), start = struct.unpack("!H", buf[2:4]), 4
        elif size == 127:
            if len(buf) < 10:
                return None
            (size,), start = struct.unpack("!Q", buf[2:10]), 10
        if len(buf) < start + size:
            return None
        self.buf = buf[start + size :]
        return opcode, buf[start : start + size]

    async def until(self, expected: Any) -> None:
        """Read and apply frames (snapshots replace, patches apply) until the state is ``expected``."""
        while self.state != expected:
            opcode, payload = await self._frame()
            if opcode == 0x8:
                self.closed = (struct.unpack("!H", payload[:2])[0], payload[2:])
                raise AssertionError(f"the server closed the stream: {self.closed}")
            if opcode != 0x2:
                continue  # a ping
            frame = orjson.loads(payload)
            self.frames += 1
            if frame["snapshot"]:
                self.snapshots += 1
                self.state = frame["data"]
            else:
                self.state = jsonpatch.JsonPatch(frame["data"]).apply(self.state, in_place=True)

    async def until_closed(self) -> tuple[int, bytes]:
        """Read until the close frame (or the end of the connection) and return it."""
        while True:
            try:
                opcode, payload = await self._frame()
            except ConnectionError:
                return (1006, b"")
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:]


class Logged(logging.Handler):
    """``with Logged(logger, text):`` sets :attr:`seen` once ``logger`` logs ``text`` (how a test
    awaits what the server only reports in its log)."""

    def __init__(self, logger: logging.Logger, text: str) -> None:
        super().__init__()
        self.logger = logger
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> Logged:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


def _server_side(live: Live, sub: RawSubscriber) -> Connection:
    """The server's connection of ``sub`` (matched by its address)."""
    me = sub.sock.getsockname()
    for conn in live.server.pools.connections():
        transport = conn.request.transport
        if transport is not None and transport.get_extra_info("peername") == me:
            return conn
    raise AssertionError("the raw subscriber has no connection on the server")


class Ordered:
    """A subscriber that keeps reading, checking that every frame after its first snapshot is a
    patch of a later version."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.versions: list[int] = []

    async def read_until(self, done: Callable[[Any], bool]) -> None:
        follower = self.follower
        while not done(follower.state):
            frame = await follower.step(timeout=30)
            assert not frame["snapshot"], "a subscriber that keeps reading got a snapshot"
            self.versions.append(int(frame["version"], 16))


async def _state(live: Live) -> dict[str, Any]:
    status, body = await live.request("GET", "?api=state")
    assert status == 200
    result: dict[str, Any] = orjson.loads(body)
    return result


@pytest.mark.parametrize(
    ("writes", "size", "outbox"),
    [
        (6_000, 2_000, OUTBOX),  # 12 MB in all, more than loopback socket buffers take
        # frames larger than a slice: conflation meets frames partly handed over (an outbox of a
        # few frames, so that the subscribers that read keep up)
        (120, 200_000, 2 * 1024 * 1024),
    ],
)
async def test_stalled_subscriber_is_conflated_not_dropped(
    make_live: LiveFactory, writes: int, size: int, outbox: int
) -> None:
    live = await make_live(outbox_bytes=outbox, write_timeout=30.0)
    for k in range(KEYS):
        await live.request("POST", f"c/{k}", {"n": -1})
    stalled = await RawSubscriber.open(live, "c/*")
    twin = await RawSubscriber.open(live, "c/*")  # stalls too: both catch up with the same bytes
    first = await live.get("c/*")
    await stalled.until(first)  # its first snapshot; from now on it reads nothing
    await twin.until(first)
    others = [Ordered(Follower(await live.ws("c/*"))) for _ in range(2)]
    for other in others:
        await other.follower.step()
    conn = _server_side(live, stalled)
    transport = conn.request.transport
    assert transport is not None
    high_water = transport.get_write_buffer_limits()[1]

    most_queued = 0
    blob = "x" * size

    async def write(k: int) -> None:
        nonlocal most_queued
        for n in range(writes // KEYS):
            status, _ = await live.request("POST", f"c/{k}", {"n": n, "blob": blob})
            assert status in (200, 201)
            assert not conn.closed, conn.close_reason
            most_queued = max(most_queued, conn.queued_bytes)

    last = {"n": writes // KEYS - 1, "blob": blob}

    def done(state: Any) -> bool:
        return all(item["data"] == last for item in state)

    async with asyncio.timeout(120):
        reading = [asyncio.create_task(o.read_until(done)) for o in others]
        await asyncio.gather(*(write(k) for k in range(KEYS)))
        await asyncio.gather(*reading)
    expected = await live.get("c/*")
    assert done(expected)
    for other in others:  # every patch, in order
        assert other.follower.state == expected
        assert other.versions == sorted(set(other.versions))
        assert len(other.versions) == writes

    state = await _state(live)
    assert state["slowDisconnects"] == 0 and state["totalConnections"] == 4
    assert state["conflations"] >= 1
    assert [(p["key"], p["conflations"]) for p in state["pools"]] == [("c/*", state["conflations"])]
    assert not conn.closed
    twin_conn = _server_side(live, twin)
    assert conn.behind and twin_conn.behind  # conflated, waiting for their sockets to drain
    pools = live.server.pools
    assert pools.catch_up(conn) is pools.catch_up(twin_conn)  # one snapshot, encoded once

    # memory stays bounded: the outbox plus one frame (a snapshot is the largest), beyond what the
    # transport holds (its high-water mark plus the one write that crossed it)
    biggest = len(live.server.pools.pools["c/*"].snapshot_frame())
    assert most_queued <= outbox + biggest + high_water + 64 * 1024, most_queued

    async with asyncio.timeout(30):
        await stalled.until(expected)
    assert stalled.snapshots >= 2  # caught up with a snapshot after the first
    assert stalled.frames < writes  # its queued patches were dropped, not all delivered
    assert not conn.closed
    async with asyncio.timeout(30):
        await twin.until(expected)
    assert twin.snapshots >= 2
    stalled.sock.close()
    twin.sock.close()


@pytest.mark.parametrize("outbox", [OUTBOX, 64 * 1024 * 1024])
async def test_subscriber_that_never_reads_is_dropped_after_write_timeout(
    make_live: LiveFactory, outbox: int
) -> None:
    live = await make_live(outbox_bytes=outbox, write_timeout=0.5)
    stalled = await RawSubscriber.open(live, "n/*")
    conn = _server_side(live, stalled)
    blob = "x" * 64 * 1024
    with Logged(logging.getLogger("ooo_storage.server"), "dropping slow subscriber") as dropped:
        async with asyncio.timeout(30):
            for i in range(400):
                if conn.closed:
                    break
                await live.request("POST", f"n/{i % 4}", {"i": i, "blob": blob})
            await dropped.seen.wait()  # the timeout may strike after the last write
    assert conn.closed and conn.close_reason == "write timeout"
    state = await _state(live)
    assert state["slowDisconnects"] == 1
    assert (state["conflations"] >= 1) == (outbox == OUTBOX)
    async with asyncio.timeout(10):
        code, reason = await stalled.until_closed()
    assert (code, reason) in ((1011, b"write timeout"), (1006, b""))
    stalled.sock.close()
