"""Raw connections of bench/hostile.py's passive attacks, and the probe of a normal client.

The passive attackers (requests never read, request heads never finished, websocket subscribers that
never read) cost their process no CPU once connected, so they run as plain asyncio protocols in the
harness itself; the busy ones are processes of bench/_hostile_clients.py. Whether the server still
holds a connection is read from its side (/proc/net/tcp and its fds), because a client that does not
read cannot see a FIN queued behind unread data.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from bench._hostile_server import socket_inodes
from bench._load import HOST, HttpConnection, Subscriber


class Http(HttpConnection):
    """bench/_load.py's keep-alive connection, also reading chunked replies (a server may stream a
    long glob list instead of building it whole)."""

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(*await asyncio.open_connection(HOST, port))

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        fields = dict(line.split(b":", 1) for line in head.lower().split(b"\r\n")[1:] if b":" in line)
        if fields.get(b"transfer-encoding", b"").strip() == b"chunked":
            return int(head[9:12]), await self._chunks()
        length = int(fields.get(b"content-length", b"0"))
        return int(head[9:12]), await self.reader.readexactly(length) if length else b""

    async def _chunks(self) -> bytes:
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the blank line
            pass
        return b"".join(parts)


async def open_many(port: int, n: int, factory: Callable[[], Any], *, batch: int = 100,
                    timeout: float = 10.0) -> list[Any]:
    """Open ``n`` connections with protocols from ``factory``, ``batch`` at a time (a listen backlog is
    finite); a connection that does not complete within ``timeout`` seconds is left out."""
    loop = asyncio.get_running_loop()
    protocols: list[Any] = []
    for first in range(0, n, batch):
        made = await asyncio.gather(
            *(asyncio.wait_for(loop.create_connection(factory, HOST, port), timeout)
              for _ in range(first, min(n, first + batch))),
            return_exceptions=True,
        )
        protocols += [pair[1] for pair in made if isinstance(pair, tuple)]
    return protocols


class Idle(asyncio.Protocol):
    """Sends ``payload`` once connected, then nothing; with ``read=False`` it never reads either."""

    def __init__(self, payload: bytes, *, read: bool = True) -> None:
        self.payload, self.read = payload, read
        self.transport: asyncio.Transport | None = None
        self.reply = b""
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.read:
            transport.pause_reading()
        transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.reply = (self.reply + data)[:64]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    @property
    def port(self) -> int:
        """This end's port (how the server side of the connection is found in /proc/net/tcp)."""
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class DeafSubscriber(Subscriber):
    """A websocket subscriber that completes the upgrade, then never reads again."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.upgraded and self.transport is not None:
            self.transport.pause_reading()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


def held_by_server(pid: int, server_port: int, client_ports: Collection[int]) -> int:
    """How many of the connections from ``client_ports`` the server process still holds open (an
    accepted socket it has not closed; not one waiting in the listen backlog)."""
    inodes, ports, held = socket_inodes(pid), set(client_ports), 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1].rpartition(":")[2], fields[2].rpartition(":")[2]
                if (fields[9] in inodes and int(local, 16) == server_port
                        and int(remote, 16) in ports):
                    held += 1
    return held


async def probe(port: int, path: str = "/victim/0", timeout: float = 5.0) -> tuple[int | None, float]:
    """What a normal client gets: (status, or None without a reply in ``timeout`` s; latency in ms),
    on a new connection."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    conn: Http | None = None
    try:
        async with asyncio.timeout(timeout):
            conn = await Http.open(port)
            status, _ = await conn.request("GET", path)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None, (loop.time() - start) * 1000
    finally:
        if conn is not None:
            conn.close()
    return status, (loop.time() - start) * 1000


def probe_text(result: tuple[int | None, float], timeout: float) -> str:
    status, ms = result
    return f"{status} in {ms:,.0f} ms" if status is not None else f"no reply in {timeout:g} s"
