"""The lean front's GET of one key without a coroutine (issue 10): ``Layered.read_now`` reads what
``Layered.get`` reads, and the answers are those of the path it replaced and of aiohttp (writes of
the same burst seen, locked keys read at once, filters, the read hook, metrics and the access log,
a store that cannot read at once). Also the cheaper head reading: a key's validity read with its
URL, header blocks read once. Real servers on 127.0.0.1 over real LevelDB stores, raw sockets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.helpers import rfc822_formatted_time
from raw_http import END, HOST, exchange, req, responses

from ooo_storage import Layered, LevelDBLayer, MemoryLayer
from ooo_storage.errors import GlobNotAllowed, NotActive
from ooo_storage.layered import Options
from ooo_storage.protocol import keys
from ooo_storage.server import Server, ServerRunner
from ooo_storage.server.front import wire
from ooo_storage.server.front.wire import Dates, NotOurs, Request, _parsed_head, read_head

DOC = b'{"name":"Ada","tags":["math"]}'


def statuses(raw: bytes) -> list[int]:
    """The status of each answer in ``raw`` (answers to HEADs have no body: no parsing by length)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def masked(raw: bytes) -> bytes:
    """``raw`` without what differs between two servers: the Date and the times of each write."""
    raw = re.sub(rb"Date: [^\r]*", b"Date: -", raw)
    return re.sub(rb'"(created|updated)":\d+', rb'"\1":-', raw)


Make = Callable[..., Any]
STORES = {
    "mirrored": lambda path: Layered(memory=MemoryLayer(), embedded=LevelDBLayer(str(path))),
    "leveldb": lambda path: Layered(embedded=LevelDBLayer(str(path))),  # a synchronous layer alone
    "durable": lambda path: Layered(embedded=LevelDBLayer(str(path), sync=True)),  # reads wait
}


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Make]:
    """``make(kind, engine, **options)``: a started server over a new store of ``kind``."""
    opened: list[tuple[Layered, ServerRunner]] = []

    async def make(kind: str = "mirrored", engine: str = "lean", options: Options | None = None,
                   **server_options: Any) -> ServerRunner:
        store = STORES[kind](tmp_path / f"db{len(opened)}")
        await store.start(options)
        server = Server(store, shutdown_timeout=1.0, http_engine=engine, **server_options)
        runner = ServerRunner(store, "127.0.0.1", 0, server=server)
        await runner.start()
        opened.append((store, runner))
        return runner

    yield make
    for store, runner in opened:
        await runner.stop()
        await store.close()


def reads_now(runner: ServerRunner) -> bool:
    return runner.server.store.reads_now


# -- the store: read_now reads what get reads --------------------------------------------------


@pytest.mark.parametrize("kind", ["mirrored", "leveldb"])
async def test_read_now_reads_what_get_reads(tmp_path: Path, kind: str) -> None:
    seen: list[str] = []
    store = STORES[kind](tmp_path / "db")
    with pytest.raises(NotActive):
        store.read_now("a")
    await store.start(Options(before_read=seen.append))
    try:
        assert store.reads_now
        await store.set("a/b", {"n": 1})
        assert store.read_now("a/b") == await store.get("a/b")
        assert store.read_now("a/none") is None
        with pytest.raises(GlobNotAllowed):
            store.read_now("a/*")
        assert seen == ["a/b", "a/b", "a/none"]  # the read hook, as get calls it
        locked = await store.get_and_lock("a/b")
        assert store.read_now("a/b") == locked == await store.get("a/b")  # neither waits for the lock
        await store.set_and_unlock("a/b", {"n": 2})
        assert store.read_now("a/b") == await store.get("a/b")
        assert store.read_now("a/b").value == {"n": 2}  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_a_store_whose_reads_wait_does_not_read_now(tmp_path: Path) -> None:
    store = STORES["durable"](tmp_path / "db")
    await store.start()
    try:
        assert not store.reads_now
    finally:
        await store.close()


# -- answers: as aiohttp's, on every kind of store ---------------------------------------------

CASES = (
    req("POST", "/get/a", DOC) + req("GET", "/get/a") + req("HEAD", "/get/a") + req("GET", "/get/none")
    + req("HEAD", "/get/none") + req("GET", "/get//a") + req("GET", "/get/a.") + req("GET", "/-get")
    + req("HEAD", "/get/a/") + req("GET", "/get/a", headers=HOST + b"Origin: http://good.example\r\n")
    + req("GET", "/get/a", headers=HOST + b"Origin: http://bad.example\r\n")
    + req("GET", "/get/*") + req("GET", "/get/**") + req("DELETE", "/get/a") + req("GET", "/get/a")
)


@pytest.mark.parametrize("kind", list(STORES))
async def test_gets_of_one_key_answer_byte_for_byte_like_aiohttp(servers: Make, kind: str) -> None:
    plain = await servers(kind, "aiohttp", allowed_origins=["http://good.example"])
    lean = await servers(kind, "lean", allowed_origins=["http://good.example"])
    assert reads_now(lean) == (kind != "durable")
    old, new = [masked(await exchange(runner.port, CASES)) for runner in (plain, lean)]
    assert new == old
    assert statuses(new)[:11] == [200, 200, 200, 404, 404, 400, 400, 400, 400, 200, 403]


async def test_a_get_behind_writes_of_the_same_burst_sees_each_of_them(servers: Make) -> None:
    lean = await servers()
    burst = (req("POST", "/burst/a", b'{"n":1}') + req("GET", "/burst/a") + req("POST", "/burst/a", b'{"n":2}')
             + req("POST", "/burst/b", DOC) + req("GET", "/burst/a") + req("PATCH", "/burst/a", b'{"m":3}')
             + req("GET", "/burst/a") + req("DELETE", "/burst/a") + req("GET", "/burst/a") + req("GET", "/burst/b"))
    got = responses(await exchange(lean.port, burst))
    assert [status for status, _ in got] == [200, 200, 200, 200, 200, 200, 200, 204, 404, 200, 404]
    assert [orjson.loads(got[i][1])["data"] for i in (1, 4, 6)] == [{"n": 1}, {"n": 2}, {"n": 2, "m": 3}]
    assert orjson.loads(got[9][1])["data"] == orjson.loads(DOC)


async def test_a_get_of_a_locked_key_is_answered_at_once_with_its_last_write(servers: Make) -> None:
    """``get_and_lock`` holds the key: a GET waits for nothing (as ``Layered.get``), a POST behind
    it waits for the lock; the GET behind that one sees the POST."""
    lean = await servers()
    store = lean.server.store
    await store.set("locked/a", {"n": 0})
    await store.get_and_lock("locked/a")
    reader, writer = await asyncio.open_connection("127.0.0.1", lean.port)
    try:
        writer.write(req("GET", "/locked/a"))
        raw = await asyncio.wait_for(reader.readuntil(b'}}'), 10)  # answered while the lock is held
        [(status, body)] = responses(raw)
        assert (status, orjson.loads(body)["data"]) == (200, {"n": 0})
        writer.write(req("POST", "/locked/a", b'{"n":1}') + req("GET", "/locked/a") + END)
        await store.set_and_unlock("locked/a", {"n": 9})
        got = responses(await asyncio.wait_for(reader.read(), 10))
        assert [status for status, _ in got] == [200, 200, 404]  # the last: ``/end``
        assert orjson.loads(got[1][1])["data"] == {"n": 1}  # after the locked write: the POST's
    finally:
        writer.close()


async def test_read_filters_and_static_mode_apply_to_a_get_as_under_aiohttp(servers: Make) -> None:
    runners = [await servers(engine=engine, static=True) for engine in ("aiohttp", "lean")]
    for runner in runners:
        runner.server.open_filter("open/*")
        runner.server.read_object_filter("hid/*", lambda key, obj: obj._replace(data=b'{"hidden":true}'))
        runner.server.read_object_filter("gone/*", lambda key, obj: None)
        for key in ("open/a", "hid/a", "gone/a", "other/a"):
            await runner.server.store.set(key, {"secret": 1})
    data = b"".join(req(method, f"/{key}") for key in ("open/a", "hid/a", "gone/a", "other/a", "open/none")
                    for method in ("GET", "HEAD"))
    old, new = [masked(await exchange(runner.port, data)) for runner in runners]
    assert new == old
    assert statuses(new) == [200, 200, 200, 200, 404, 404, 400, 400, 404, 404, 400]
    assert re.findall(rb'"data":(\{[^}]*\})', new)[:2] == [b'{"secret":1}', b'{"hidden":true}']


async def test_the_read_hook_runs_for_a_get_and_its_refusal_answers_as_under_aiohttp(servers: Make) -> None:
    seen: dict[str, list[str]] = {"aiohttp": [], "lean": []}
    runners = []
    for engine in ("aiohttp", "lean"):
        def hook(key: str, seen: list[str] = seen[engine]) -> None:
            seen.append(key)
            if key.startswith("no/"):
                raise NotActive("storage: not active: reads of no/ refused")
        runners.append(await servers(engine=engine, options=Options(before_read=hook)))
    data = req("POST", "/yes/a", DOC) + req("GET", "/yes/a") + req("GET", "/no/a") + req("HEAD", "/yes/b")
    old, new = [masked(await exchange(runner.port, data)) for runner in runners]
    assert new == old
    assert statuses(new) == [200, 200, 503, 404, 404]
    assert seen["lean"] == seen["aiohttp"] == ["yes/a", "no/a", "yes/b", "end"]


async def test_gets_are_counted_and_logged_as_under_aiohttp(servers: Make, caplog: pytest.LogCaptureFixture) -> None:
    runners = [await servers(engine=engine, access_log=True) for engine in ("aiohttp", "lean")]
    data = (req("POST", "/count/a", DOC) + req("GET", "/count/a") * 3 + req("HEAD", "/count/a")
            + req("GET", "/count/none") + req("GET", "/count//a"))
    logged = []
    for runner in runners:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ooo_storage.access"):
            await exchange(runner.port, data)
        lines = [r.getMessage() for r in caplog.records if r.name == "ooo_storage.access"]
        logged.append([re.sub(r" \d+us ", " -us ", line) for line in lines])
    assert logged[1] == logged[0]
    assert len(logged[1]) == 8
    counts = []
    for runner in runners:
        metrics = runner.server.metrics
        assert metrics is not None
        counts.append({method: {s: n for s, n in enumerate(metrics.requests.series[("object", method)].statuses) if n}
                       for method in ("GET", "HEAD")})
    assert counts[1] == counts[0]
    assert counts[1]["GET"] == {200: 3, 400: 1, 404: 1 + 1}  # ``/end`` is a key too


# -- heads: a key's validity read with its URL, header blocks read once -----------------------


def test_a_urls_validity_is_the_keys() -> None:
    """``Request.valid`` spares a GET its ``keys.is_valid``: the request naming each key of 1 to 6
    characters of an alphabet with each kind of character, valid or not, is valid as
    ``keys.is_valid`` says, read from its request line alone or with a query string."""
    for size in range(1, 7):
        for chars in itertools.product("a*/.-_Z", repeat=size):
            key = "".join(chars)
            head = f"GET /{key} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
            assert read_head(head, 8190, 100, 65536).valid == keys.is_valid(key), key
            if "*" in key:
                head = f"GET /{key}?limit=1 HTTP/1.1\r\nHost: h\r\n\r\n".encode()
                assert read_head(head, 8190, 100, 65536).valid == keys.is_valid(key), key


def fields(read: Callable[[bytes], Request], head: bytes) -> tuple[Any, ...] | None:
    try:
        request = read(head)
    except NotOurs:
        return None
    return tuple(getattr(request, name) for name in Request.__slots__)


BLOCKS = [b"Host: h\r\n\r\n", b"Host: h\r\nContent-Length: 2\r\n\r\n", b"Host: h\r\nContent-Length: 0\r\n\r\n",
          b"Host: h\r\nAuthorization: Bearer t\r\nOrigin: http://o\r\n\r\n", b"Host: h\r\nX: 1\r\nY: 2\r\n\r\n",
          b"Host: h\r\nConnection: close\r\n\r\n", b"Host: h\r\nHost: h\r\n\r\n", b"\r\n", b"Host : h\r\n\r\n"]
LINES = [b"GET /a HTTP/1.1\r\n", b"GET /a/**/b HTTP/1.1\r\n", b"POST /a HTTP/1.1\r\n", b"DELETE /a//b HTTP/1.1\r\n", b"HEAD /a* HTTP/1.1\r\n",
         b"GET /a/*?limit=1 HTTP/1.1\r\n", b"POST /?api=txn HTTP/1.1\r\n", b"GET /a HTTP/1.0\r\n", b"PUT /a HTTP/1.1\r\n"]


@pytest.mark.parametrize("limits", [(8190, 100, 65536), (8190, 1, 1)])
def test_a_header_block_read_once_reads_as_httptools_under_every_request_line(limits: tuple[int, int, int]) -> None:
    """Each block under each request line, twice (the second reading is remembered), reads as
    ``httptools`` reads the whole head, whatever the limits."""
    for _ in range(2):
        for line, block in itertools.product(LINES, BLOCKS):
            head = line + block
            plain = fields(lambda h: read_head(h, *limits), head)
            assert plain == fields(lambda h: _parsed_head(h, *limits[1:]), head), head


def test_header_blocks_remembered_are_bounded_and_read_again_alike() -> None:
    """The blocks remembered are the last 64 small ones: 200 others read after the first leave
    it forgotten, and read again it gives the same request (a large block is never kept)."""
    def head(block: bytes) -> bytes:
        return b"GET /a HTTP/1.1\r\n" + block

    first = fields(lambda h: read_head(h, 8190, 100, 65536), head(b"Host: h\r\nX-N: first\r\n\r\n"))
    for n in range(200):
        read_head(head(b"Host: h\r\nX-N: %d\r\n\r\n" % n), 8190, 100, 65536)
    read_head(head(b"Host: h\r\nX-Big: %s\r\n\r\n" % (b"x" * 2000)), 8190, 100, 65536)
    assert len(wire._BLOCKS) == 64 and max(map(len, wire._BLOCKS)) < 1024
    assert b"Host: h\r\nX-N: first\r\n\r\n" not in wire._BLOCKS
    assert fields(lambda h: read_head(h, 8190, 100, 65536), head(b"Host: h\r\nX-N: first\r\n\r\n")) == first


def test_the_date_line_is_aiohttps() -> None:
    assert Dates().line() == f"Date: {rfc822_formatted_time()}\r\n".encode()
