"""Delivery guarantees (PROTOCOL.md §5.7), other backends and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import aiohttp
import orjson
import pytest
from server_live import Follower, LiveFactory, next_frame

from ooo_storage import Layered, MemoryLayer
from ooo_storage.server import ServerRunner


class Logged(logging.Handler):
    """``with Logged(logger, text):`` sets :attr:`seen` once ``logger`` logs a message containing
    ``text`` (how a test awaits what the server only reports in its log)."""

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


@pytest.mark.parametrize(
    ("options", "conflated"),
    [
        # the outbox overflows: conflated first (issue 11), dropped only for making no progress
        ({"outbox_bytes": 256 * 1024, "write_timeout": 0.5}, True),
        ({"outbox_bytes": 64 * 1024 * 1024, "write_timeout": 0.5}, False),  # no progress
    ],
)
async def test_stalled_subscriber_dropped_others_keep_receiving(
    make_live: LiveFactory, options: dict[str, float], conflated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    live = await make_live(**options)
    stalled = await _never_reading(f"{live.ws_base}/big/*")
    reader = Follower(await live.ws("big/*"))
    await reader.step()

    async def consume() -> None:
        # Keeps reading (so this subscriber keeps up) until the write marked "last" arrives.
        while not reader.state or reader.state[0]["data"]["i"] != "last":
            await reader.step(timeout=30)

    consuming = asyncio.create_task(consume())
    blob = "x" * 64 * 1024
    dropped = Logged(logging.getLogger("ooo_storage.server"), "dropping slow subscriber")
    with dropped:
        async with asyncio.timeout(30):
            for i in range(200):
                if dropped.seen.is_set():
                    break
                await live.request("POST", "big/*", {"i": i, "blob": blob})
            await dropped.seen.wait()  # with write_timeout, the drop may come after the last write
    state = orjson.loads((await live.request("GET", "?api=state"))[1])
    assert state["slowDisconnects"] == 1
    assert (state["conflations"] >= 1) is conflated
    assert [(p["key"], p["connections"]) for p in state["pools"]] == [("big/*", 1)]
    assert "write timeout" in caplog.text and "outbox full" not in caplog.text
    await live.request("POST", "big/*", {"i": "last"})
    expected = await live.get("big/*")
    await asyncio.wait_for(consuming, 30)
    assert reader.state == expected
    assert reader.ws.closed is False
    async with asyncio.timeout(10):
        await _until_closed(stalled)


@pytest.mark.parametrize("backend", ["leveldb", "memory+leveldb"])
async def test_streams_on_persistent_backends(make_live: LiveFactory, backend: str) -> None:
    live = await make_live(backend)
    follower = Follower(await live.ws("p/*"))
    single = Follower(await live.ws("p/1"))
    await follower.step()
    await single.step()
    for i in range(10):
        await live.request("POST", f"p/{i % 4}", {"i": i})
    await live.request("DELETE", "p/2")
    await follower.until(await live.get("p/*"))
    await single.until(await live.get("p/1"))
    await live.request("DELETE", "p/*")
    await follower.until([])


async def test_shutdown_closes_sockets_with_1001() -> None:
    store = Layered(memory=MemoryLayer())
    await store.start()
    runner = ServerRunner(store, port=0, shutdown_timeout=1.0)
    port = await runner.start()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}/k")
        await next_frame(ws)
        clock = await session.ws_connect(f"ws://127.0.0.1:{port}/")
        await clock.receive(timeout=5)
        await runner.stop()
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
        while (msg := await clock.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY:
            pass
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1001
    assert store.active  # the store belongs to the caller
    await store.close()


_IDLE_CLIENT = r"""
import asyncio, sys, aiohttp
async def main(url, n):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        wss = await asyncio.gather(*(s.ws_connect(f"{url}/idle/{i % 10}") for i in range(n)))
        await asyncio.gather(*(w.receive() for w in wss))
        print("ready", flush=True)
        await asyncio.sleep(60)
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_memory_per_idle_subscriber(make_live: LiveFactory) -> None:
    """Measured server-side (the clients live in another process): small and bounded."""
    import gc
    import sys
    import tracemalloc

    live = await make_live()
    n = 300
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _IDLE_CLIENT, live.ws_base, str(n), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"ready\n"
        gc.collect()
        per_subscriber = (tracemalloc.get_traced_memory()[0] - base) / n
    finally:
        tracemalloc.stop()
    proc.kill()
    await proc.wait()
    # About 16 KiB today, nearly all of it aiohttp's own per-connection request/protocol objects.
    assert per_subscriber < 48 * 1024, per_subscriber


async def test_frame_larger_than_the_outbox_is_delivered(make_live: LiveFactory) -> None:
    """A 9 MiB value (POST accepts 10 MiB) and a glob snapshot of 9 MiB reach subscribers that
    read, with the default 8 MiB outbox (they used to be dropped with 1008, new ones at once)."""
    live = await make_live()
    one = Follower(await live.ws("big/1", max_msg_size=0))
    glob = Follower(await live.ws("big/*", max_msg_size=0))
    await one.step()
    await glob.step()
    value = {"blob": "x" * (9 * 1024 * 1024)}
    status, _ = await live.request("POST", "big/1", value)
    assert status == 200
    await one.step(timeout=30)
    await glob.step(timeout=30)
    assert one.state["data"] == value and glob.state[0]["data"] == value
    late = Follower(await live.ws("big/*", max_msg_size=0))
    frame = await late.step(timeout=30)
    assert frame["snapshot"] is True and late.state == glob.state
    state = orjson.loads((await live.request("GET", "?api=state"))[1])
    assert state["slowDisconnects"] == 0 and state["totalConnections"] == 3


async def _never_reading(url: str) -> socket.socket:
    """A websocket upgrade on a raw socket with a tiny receive buffer; it never reads again."""
    host, _, rest = url.removeprefix("ws://").partition("/")
    addr, port = host.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (addr, int(port)))
    await loop.sock_sendall(
        sock,
        f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def _until_closed(sock: socket.socket) -> None:
    """Read (and discard) what the server sent until it ends the connection: EOF or a reset."""
    loop = asyncio.get_running_loop()
    try:
        with contextlib.suppress(ConnectionResetError):
            while await loop.sock_recv(sock, 1 << 16):
                pass
    finally:
        sock.close()


async def test_subscribers_that_never_read_share_the_frames(make_live: LiveFactory) -> None:
    """50 subscribers that never read are sent 7 MiB of frames each (more than the kernel's socket
    buffers take, less than the 8 MiB outbox): the server holds those frames once, not once per
    subscriber (each used to keep its own copy in its transport buffer)."""
    import gc
    import tracemalloc

    live = await make_live()
    socks = [await _never_reading(f"{live.ws_base}/feed") for _ in range(50)]
    reader = await live.ws("feed")
    await reader.receive(timeout=5)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(70):
            await live.request("POST", "feed", {"i": i, "blob": f"{i:02d}" * 50_000})
            await reader.receive(timeout=5)  # a different 100 KB patch each time
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        state = orjson.loads((await live.request("GET", "?api=state"))[1])
    finally:
        tracemalloc.stop()
        for sock in socks:
            sock.close()
    assert state["slowDisconnects"] == 0 and state["totalConnections"] == 51
    # The frames once (7 MiB) plus the transport's share per subscriber (its high-water mark plus
    # one slice, about 128 KiB); not 50 private copies (~300 MiB before).
    assert grown < 7 * 1024 * 1024 + 50 * 192 * 1024, grown
