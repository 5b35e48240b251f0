"""Raw HTTP/1.1 bytes for the front's tests: requests written by hand, answers read back from a
byte stream (pipelining, hand-over, batches)."""

from __future__ import annotations

import asyncio
import re

HOST = b"Host: 127.0.0.1\r\n"
END = b"GET /end HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
"""A last request answered by aiohttp with ``Connection: close`` on both engines: read to EOF."""


def req(method: str, path: str, body: bytes | None = None, headers: bytes = HOST) -> bytes:
    """One request: ``headers`` (a Host line by default), a Content-Length when there is a body."""
    head = f"{method} {path} HTTP/1.1\r\n".encode() + headers
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response of a byte stream (every response has a length or none)."""
    out = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        match = re.search(rb"\r\nContent-Length: (\d+)", head)
        size = int(match.group(1)) if match else 0
        out.append((status, raw[:size]))
        raw = raw[size:]
    return out


async def exchange(port: int, data: bytes, end: bytes = END) -> bytes:
    """Everything the server answers to ``data`` then ``end`` on one connection, up to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data + end)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
