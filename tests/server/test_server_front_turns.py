"""A long pipeline does not hold the other connections back (lean front): a connection's requests
answered without a wait let the others have a turn every ``MAX_PENDING`` answers. Before, a client
pipelining thousands of POSTs had its whole buffer answered in one step of the event loop, and every
other client waited for it (an outside attack measured GETs of other clients stalled 0.4–1 s by four
such clients). Real servers on 127.0.0.1, raw sockets."""

from __future__ import annotations

import asyncio

import pytest
from server_live import Live, LiveFactory

from ooo_storage.server.front.connection import MAX_PENDING

COUNT = 1000


def post(i: int) -> bytes:
    body = b'{"n":%d}' % i
    return b"POST /a/%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next whole answer on ``reader``: its status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return int(head.split(b" ", 2)[1]), await reader.readexactly(length)


async def one_request(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await answer(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("backend", ["memory", "leveldb"])
async def test_another_clients_get_is_answered_while_a_long_pipeline_is(
    make_live: LiveFactory, backend: str
) -> None:
    assert MAX_PENDING < COUNT // 4
    live: Live = await make_live(backend)
    port = live.runner.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(post(i) for i in range(COUNT)))  # one write: one read on the server
        assert (await answer(reader))[0] == 200  # the server is answering the pipeline
        last = b"GET /a/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (COUNT - 1)
        # answered before the pipeline's last POST: the other connection had its turn
        assert await one_request(port, last) == (404, b"ooo: empty key")
        statuses = [(await answer(reader))[0] for _ in range(COUNT - 1)]
    finally:
        writer.close()
    assert statuses == [200] * (COUNT - 1)  # and the pipeline is answered whole
    assert (await live.get(f"a/{COUNT - 1}"))["data"] == {"n": COUNT - 1}
