"""The lean front's cheap paths (issue 10): request heads in the plainest form read without
``httptools`` into exactly what ``httptools`` reads, and requests answered in ``data_received``
without a task, the first that must wait going on once its wait is over (by hand, or in a task
when it needs one), every answer in request order.
Real servers on 127.0.0.1 over real LevelDB stores, raw sockets."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from raw_http import req, responses

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.server import ServerRunner
from ooo_storage.server.front import Front
from ooo_storage.server.front.wire import _PLAIN_HEAD, NotOurs, Request, _parsed_head, read_head

DOC = b'{"name":"Ada","tags":["math"]}'

# -- heads: the plain reading is httptools' reading --------------------------------------------

HEADS = [
    b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET /a/b.c_d-e HTTP/1.1\r\nHost: 127.0.0.1:8800\r\nAccept: */*\r\nUser-Agent: x/1 (y)\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 150\r\n\r\n",
    b"POST /users/1 HTTP/1.1\r\nhost:h\r\ncontent-length:  0150 \r\n\r\n",
    b"HEAD /a HTTP/1.1\r\nHost: h\r\nOrigin: http://good.example\r\n\r\n",
    b"DELETE /a/* HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer  tok-1 \r\n\r\n",
    b"PATCH /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
    b"PATCH /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection:\tKeep-Alive\t\r\n\r\n",
    b"GET /a/* HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/*?limit=2&cursor=abc_- HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /?api=txn HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n",
    b"HEAD /a/*?limit=1 HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n\r\n",
    # each NotOurs, on either reading
    b"GET /a HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Encoding: gzip\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Protocol: x\r\n\r\n",
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a/*?limit=1&limit=2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /a/*?limit=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /?api=txn HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a%41 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"PUT /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
    # not in the plain form: httptools reads them (the same way as before)
    b"GET  /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: \x7f\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n",
    b"get /a HTTP/1.1\r\nHost: h\r\n\r\n",
    b"OPTIONS /a HTTP/1.1\r\nHost: h\r\n\r\n",
]


def fields(request: Request | None) -> tuple[Any, ...] | None:
    if request is None:
        return None
    return tuple(getattr(request, name) for name in Request.__slots__)


def reading(read: Any, head: bytes) -> tuple[Any, ...] | None:
    try:
        return fields(read(head))
    except NotOurs:
        return None


@pytest.mark.parametrize("head", HEADS)
def test_a_plain_head_reads_as_httptools_reads_it(head: bytes) -> None:
    limits = (8190, 100, 65536)
    plain = reading(lambda h: read_head(h, *limits), head)
    assert plain == reading(lambda h: _parsed_head(h, *limits[1:]), head)


def test_the_plain_form_covers_the_usual_heads_and_leaves_the_odd_ones() -> None:
    assert all(_PLAIN_HEAD(h) is not None for h in HEADS[:12])
    assert all(_PLAIN_HEAD(h) is None for h in HEADS[-7:])


def test_a_head_over_the_header_limit_is_not_ours_on_the_plain_reading() -> None:
    head = b"GET /a HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 5 + b"\r\n"
    assert _PLAIN_HEAD(head) is not None
    assert read_head(head, 8190, 6, 65536).key == "a"
    with pytest.raises(NotOurs):
        read_head(head, 8190, 5, 65536)


# -- answers in data_received, then in a task --------------------------------------------------




@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[ServerRunner]:
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db")))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, http_engine="lean", shutdown_timeout=1.0)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
        await store.close()


async def answers(port: int, data: bytes, count: int) -> list[tuple[int, bytes]]:
    """The first ``count`` answers to ``data`` sent at once on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        raw = b""
        async with asyncio.timeout(10):
            while len(responses(raw)) < count or len(raw) < _answered_length(raw, count):
                chunk = await reader.read(65536)
                assert chunk, f"connection closed after {responses(raw)}"
                raw += chunk
        return responses(raw)
    finally:
        writer.close()


def _answered_length(raw: bytes, count: int) -> int:
    """Bytes of the first ``count`` whole responses of ``raw`` (more than ``len(raw)`` while the
    last one's body is still arriving)."""
    at = 0
    for _ in range(count):
        end = raw.find(b"\r\n\r\n", at)
        if end < 0:
            return len(raw) + 1
        match = re.search(rb"\r\nContent-Length: (\d+)", raw[at:end + 4])
        at = end + 4 + (int(match.group(1)) if match else 0)
    return at


async def test_a_failing_write_in_a_pipelined_burst_fails_alone_in_order(served: ServerRunner) -> None:
    burst = (req("POST", "/inline/a", DOC) + req("POST", "/inline/b", b"{nope") + req("POST", "/inline//c", DOC)
             + req("POST", "/inline/d", DOC) + req("GET", "/inline/a") + req("GET", "/inline/b")
             + req("GET", "/inline/d"))
    got = await answers(served.port, burst, 7)
    assert [status for status, _ in got] == [200, 400, 400, 200, 200, 404, 200]
    assert orjson.loads(got[4][1])["data"] == orjson.loads(DOC)
    assert orjson.loads(got[6][1])["data"] == orjson.loads(DOC)
    store = served.server.store
    assert (await store.get("inline/d")).value == orjson.loads(DOC)


async def test_a_request_that_waits_goes_on_in_a_task_and_keeps_the_order(served: ServerRunner) -> None:
    """A POST to a locked key waits (it goes on where ``data_received`` left it once the lock is
    free: by hand, without a task); the requests behind it wait for it, the one before it is
    answered at once."""
    store = served.server.store
    await store.set("inline/locked", {"n": 0})
    await store.get_and_lock("inline/locked")
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    raw = b""

    async def read_answers(count: int) -> list[tuple[int, bytes]]:
        nonlocal raw
        async with asyncio.timeout(10):
            while _answered_length(raw, count) > len(raw):
                chunk = await reader.read(65536)
                assert chunk, f"connection closed after {responses(raw)}"
                raw += chunk
        return responses(raw)

    try:
        writer.write(req("POST", "/inline/first", DOC) + req("POST", "/inline/locked", b'{"n":1}')
                     + req("GET", "/inline/locked") + req("POST", "/inline/last", DOC))
        assert await read_answers(1) == [(200, b'{"index":"first"}')]
        assert served.gate is not None
        [front] = [c for c in served.gate.open if isinstance(c, Front)]
        async with asyncio.timeout(10):
            while front.worker is None:  # the locked write waits (by hand: no task)
                await asyncio.sleep(0.01)
        assert len(front.queue) == 3
        assert store.peek("inline/last") is None  # behind it: not started
        await store.unlock("inline/locked")
        got = await read_answers(4)
        assert [status for status, _ in got] == [200, 200, 200, 200]
        assert orjson.loads(got[2][1])["data"] == {"n": 1}
        assert (await store.get("inline/last")).value == orjson.loads(DOC)
        async with asyncio.timeout(10):
            while front.worker is not None:
                await asyncio.sleep(0.01)
    finally:
        writer.close()



async def test_on_a_durable_store_reads_go_before_and_after_a_write_in_order(tmp_path: Path) -> None:
    """``--sync`` (an asynchronous LevelDB layer under a memory mirror): a GET is answered in
    ``data_received``, the POST behind it needs a task (its group commit), and the GET behind that
    one sees the write."""
    store = Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(tmp_path / "db"), sync=True))
    await store.start()
    runner = ServerRunner(store, "127.0.0.1", 0, http_engine="lean", shutdown_timeout=1.0)
    await runner.start()
    try:
        await store.set("durable/a", {"n": 0})
        got = await answers(runner.port, req("GET", "/durable/a") + req("POST", "/durable/a", b'{"n":1}')
                            + req("GET", "/durable/a"), 3)
        assert [status for status, _ in got] == [200, 200, 200]
        assert [orjson.loads(got[i][1])["data"] for i in (0, 2)] == [{"n": 0}, {"n": 1}]
    finally:
        await runner.stop()
        await store.close()
